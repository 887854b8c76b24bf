//! The probe benchmark (issue #17): runs the real `meridian` binary against a farm of loopback
//! backends and measures what probing costs. Run through `bench/probes.sh`, which builds in
//! release mode and raises the open-file limit; see bench/README.md for the figures.
//!
//! ```text
//! probe_bench load MERIDIAN http|tcp TARGETS SECONDS   # CPU, memory, probes/s, time to
//!                                                       # steady state, DNS/TCP p99 at start
//! probe_bench flap MERIDIAN TARGETS SECONDS LOSS       # transitions at random probe loss,
//!                                                       # fast_interval on and off
//! probe_bench withdraw MERIDIAN TARGETS                # time to withdraw hung targets
//! probe_bench floor - TARGETS SECONDS                  # the same TCP checks as a bare loop of
//!                                                       # syscalls: the kernel's share alone
//! probe_bench burst MERIDIAN TARGETS                   # every target fails at once: each
//!                                                       # transition counted and posted once
//! ```
//!
//! Every run uses interval 1 s; `load` and `withdraw` use timeout 500 ms, rise 2, fall 2.

#![allow(unreachable_pub)]

#[path = "../tests/it/farm.rs"]
mod farm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use farm::{Farm, Kind};

const REGIONS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: see the top of examples/probe_bench.rs");
            std::process::exit(2)
        })
    };
    farm::raise_fd_limit();
    let meridian = PathBuf::from(arg(1));
    match arg(0) {
        "load" => {
            let kind = match arg(2) {
                "http" => Kind::Http,
                "tcp" => Kind::Tcp,
                other => panic!("unknown kind {other}"),
            };
            load(
                &meridian,
                kind,
                arg(3).parse().unwrap(),
                arg(4).parse().unwrap(),
            );
        }
        "flap" => flap(
            &meridian,
            arg(2).parse().unwrap(),
            arg(3).parse().unwrap(),
            arg(4).parse().unwrap(),
        ),
        "withdraw" => withdraw(&meridian, arg(2).parse().unwrap()),
        "burst" => burst(&meridian, arg(2).parse().unwrap()),
        "floor" => floor(arg(2).parse().unwrap(), arg(3).parse().unwrap()),
        // A second farm process: backends FIRST..FIRST+COUNT on PORT (see `Farms`).
        "farm" => {
            let kind = if arg(4) == "http" {
                Kind::Http
            } else {
                Kind::Tcp
            };
            let farm = Farm::start_at(
                arg(1).parse().unwrap(),
                arg(2).parse().unwrap(),
                kind,
                Some(arg(3).parse().unwrap()),
            );
            println!("started");
            // Commands from the parent on stdin: `loss SHARE`.
            let shared = farm.shared.clone();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::stdin().lock()).map_while(Result::ok) {
                    if let Some(v) = line
                        .strip_prefix("loss ")
                        .and_then(|v| v.parse::<f64>().ok())
                    {
                        shared.loss_ppm.store((v * 1e6) as u32, Ordering::Relaxed);
                    }
                }
            });
            let mut out = std::io::stdout();
            loop {
                if writeln!(out, "{} {}", farm.requests(), farm.accepts()).is_err() {
                    return;
                }
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Backends split over this process and, past [`LOCAL_BACKENDS`], a second one (each HTTP
/// backend needs two descriptors in the farm: its listener and the kept connection, and one
/// process may not have 20,000).
struct Farms {
    local: Farm,
    remote: Option<(Child, Arc<[std::sync::atomic::AtomicU64; 2]>)>,
    addrs: Vec<std::net::IpAddr>,
}

/// Backends served by this process.
const LOCAL_BACKENDS: usize = 5000;

impl Farms {
    fn start(count: usize, kind: Kind) -> Farms {
        let local = Farm::start(count.min(LOCAL_BACKENDS), kind);
        let mut addrs = local.addrs.clone();
        let mut remote = None;
        if count > LOCAL_BACKENDS {
            let rest = count - LOCAL_BACKENDS;
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "farm",
                    &LOCAL_BACKENDS.to_string(),
                    &rest.to_string(),
                    &local.port.to_string(),
                    if kind == Kind::Http { "http" } else { "tcp" },
                ])
                .stdout(Stdio::piped())
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn the second farm");
            let counts = Arc::new([
                std::sync::atomic::AtomicU64::new(0),
                std::sync::atomic::AtomicU64::new(0),
            ]);
            let mut lines =
                std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
            assert_eq!(lines.next().unwrap().unwrap(), "started");
            let c = counts.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    let mut it = line.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
                    c[0].store(it.next().unwrap_or(0), Ordering::Relaxed);
                    c[1].store(it.next().unwrap_or(0), Ordering::Relaxed);
                }
            });
            addrs.extend((LOCAL_BACKENDS..count).map(farm::farm_addr));
            remote = Some((child, counts));
        }
        Farms {
            local,
            remote,
            addrs,
        }
    }

    fn requests(&self) -> u64 {
        self.local.requests()
            + self
                .remote
                .as_ref()
                .map_or(0, |(_, c)| c[0].load(Ordering::Relaxed))
    }

    /// Makes `share` of the HTTP probes of every backend fail (503), in both processes.
    fn set_loss(&mut self, share: f64) {
        self.local.set_loss(share);
        if let Some((child, _)) = &mut self.remote
            && let Some(stdin) = child.stdin.as_mut()
        {
            let _ = writeln!(stdin, "loss {share}");
            let _ = stdin.flush();
        }
    }

    fn accepts(&self) -> u64 {
        self.local.accepts()
            + self
                .remote
                .as_ref()
                .map_or(0, |(_, c)| c[1].load(Ordering::Relaxed))
    }
}

impl Drop for Farms {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.remote {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running meridian, killed by pid on drop.
struct Meridian {
    child: Child,
    dir: PathBuf,
    dns: SocketAddr,
    admin: SocketAddr,
    started: Instant,
}

impl Meridian {
    /// Panics with the end of meridian's log when it is no longer running.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(self.dir.join("meridian.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "meridian exited with {status}; its last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Meridian {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(farm: &Farm, kind: Kind, check_extra: &str) -> String {
    config_for(&farm.addrs, farm.port, kind, check_extra)
}

fn config_for(addrs: &[std::net::IpAddr], port: u16, kind: Kind, check_extra: &str) -> String {
    let zone = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/example.net.zone");
    // PROBE_THREADS (bench/probes.sh) sets `server.probe_threads`; unset, the default.
    let threads = std::env::var("PROBE_THREADS")
        .ok()
        .filter(|t| !t.is_empty())
        .map_or(String::new(), |t| format!("probe_threads = {t}\n"));
    let mut out = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{threads}\
         [[zone]]\norigin = \"example.net.\"\nfile = \"{}\"\n",
        zone.display()
    );
    for (i, r) in REGIONS.iter().enumerate() {
        out.push_str(&format!(
            "[region.{r}]\nlatitude = {}.0\nlongitude = {}.0\n",
            10 * i,
            20 * i
        ));
    }
    let kind = match kind {
        Kind::Http => "kind = \"http\"\npath = \"/healthz\"",
        Kind::Tcp => "kind = \"tcp\"",
    };
    out.push_str(&format!(
        "[check.web]\n{kind}\nport = {port}\ninterval = \"1s\"\n{check_extra}\n"
    ));
    for (s, chunk) in addrs.chunks(REGIONS.len()).enumerate() {
        let endpoints: Vec<String> = chunk
            .iter()
            .zip(REGIONS)
            .map(|(a, r)| format!("{{ region = \"{r}\", addresses = [\"{a}\"] }}"))
            .collect();
        out.push_str(&format!(
            "[[service]]\nname = \"p{s}.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{}]\n",
            endpoints.join(", ")
        ));
    }
    out
}

fn start(meridian: &Path, config_text: &str) -> Meridian {
    let dir = std::env::temp_dir().join(format!(
        "meridian-probe-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meridian.toml");
    std::fs::write(&path, config_text).unwrap();
    let log = std::fs::File::create(dir.join("meridian.log")).unwrap();
    let started = Instant::now();
    let child = Command::new(meridian)
        .args(["serve", "--config"])
        .arg(&path)
        .env("MERIDIAN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn meridian");
    let mut m = Meridian {
        child,
        dir: dir.clone(),
        dns: "0.0.0.0:0".parse().unwrap(),
        admin: "0.0.0.0:0".parse().unwrap(),
        started,
    };
    let find = |text: &str, tag: &str| -> Option<SocketAddr> {
        text.lines().find_map(|l| {
            let i = l.find(tag)?;
            l[i + tag.len()..].split_whitespace().next()?.parse().ok()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(dir.join("meridian.log")).unwrap_or_default();
        if let (Some(d), Some(a)) = (
            find(&text, "listening dns/tcp "),
            find(&text, "listening admin/http "),
        ) {
            m.dns = d;
            m.admin = a;
            return m;
        }
        assert!(Instant::now() < deadline, "meridian did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Returns the sum of the samples of `name` whose line contains `labels`.
fn metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    get(admin, "/metrics")
        .1
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// utime and stime in seconds, and VmRSS and VmHWM in MiB, of `pid`.
fn usage_split(pid: u32) -> (f64, f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf reads a constant.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let user = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / tck;
    let system = f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / tck;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (user, system, kb("VmRSS:"), kb("VmHWM:"))
}

/// A DNS query for the SOA of example.net., with a 2-byte length prefix.
fn soa_query(id: u16) -> Vec<u8> {
    let mut q = vec![0u8, 0];
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["example", "net"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    let len = (q.len() - 2) as u16;
    q[..2].copy_from_slice(&len.to_be_bytes());
    q
}

/// Sends TCP queries (a new connection each, as most resolvers do) every 10 ms until `stop`;
/// returns the round-trip times in milliseconds (a failure counts as 5000).
fn tcp_latencies(dns: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut id = 0u16;
        while !stop.load(Ordering::Relaxed) {
            id = id.wrapping_add(1);
            let t = Instant::now();
            let ok = (|| -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&dns, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.set_nodelay(true)?;
                s.write_all(&soa_query(id))?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len)?;
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut body)?;
                Ok(())
            })();
            out.push(if ok.is_ok() {
                t.elapsed().as_secs_f64() * 1000.0
            } else {
                5000.0
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Waits until the probe rate over the trailing second reaches 95 % of `targets` per second;
/// returns the time since `since`.
fn wait_steady(farm: &Farm, targets: usize, since: Instant, bound: Duration) -> Option<Duration> {
    wait_steady_by(&|| farm.requests(), targets, since, bound)
}

fn wait_steady_by(
    requests: &dyn Fn() -> u64,
    targets: usize,
    since: Instant,
    bound: Duration,
) -> Option<Duration> {
    let mut samples: Vec<(Instant, u64)> = vec![(Instant::now(), requests())];
    while since.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
        let now = (Instant::now(), requests());
        samples.push(now);
        let window: Vec<&(Instant, u64)> = samples
            .iter()
            .filter(|(t, _)| now.0.duration_since(*t) <= Duration::from_secs(1))
            .collect();
        let first = window[0];
        let span = now.0.duration_since(first.0).as_secs_f64();
        if span >= 0.9 && (now.1 - first.1) as f64 / span >= 0.95 * targets as f64 {
            return Some(since.elapsed());
        }
    }
    None
}

/// Samples `requests` every 20 ms until `stop`, with the time since `since` of each sample.
fn sample_requests(
    requests: &(dyn Fn() -> u64 + Sync),
    since: Instant,
    stop: &AtomicBool,
) -> Vec<(f64, u64)> {
    // Nothing was served before the spawn.
    let mut out = vec![(0.0, 0)];
    while !stop.load(Ordering::Relaxed) {
        out.push((since.elapsed().as_secs_f64(), requests()));
        std::thread::sleep(Duration::from_millis(20));
    }
    out
}

/// Returns the first sample time at which the requests of the trailing second reach 95 % of
/// `targets`, and the time of the first request (both since the spawn).
fn steady_from_samples(samples: &[(f64, u64)], targets: usize) -> (Option<f64>, Option<f64>) {
    let first = samples.iter().find(|(_, n)| *n > 0).map(|(t, _)| *t);
    let steady = samples.iter().find_map(|&(t, n)| {
        // The latest sample at least a second earlier.
        let (_, before) = samples.iter().rev().find(|(s, _)| *s <= t - 1.0)?;
        ((n - before) as f64 >= 0.95 * targets as f64).then_some(t)
    });
    (steady, first)
}

fn load(meridian: &Path, kind: Kind, targets: usize, seconds: u64) {
    let farm = Farms::start(targets, kind);
    let stop_sampling = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let requests = || farm.requests();
        let m = start(
            meridian,
            &config_for(
                &farm.addrs,
                farm.local.port,
                kind,
                "timeout = \"500ms\"\nrise = 2\nfall = 2\n",
            ),
        );
        let since = m.started;
        let stop = &stop_sampling;
        let sampler = scope.spawn(move || sample_requests(&requests, since, stop));
        load_measure(m, &farm, kind, targets, seconds, || {
            stop_sampling.store(true, Ordering::Relaxed);
            sampler.join().unwrap()
        });
    });
}

fn load_measure(
    mut m: Meridian,
    farm: &Farms,
    kind: Kind,
    targets: usize,
    seconds: u64,
    samples: impl FnOnce() -> Vec<(f64, u64)>,
) {
    let pid = m.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let dns_lat = tcp_latencies(m.dns, stop.clone());
    let ready_at = {
        let mut at = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while at.is_none() && Instant::now() < deadline {
            if get(m.admin, "/ready").0 == 200 {
                at = Some(m.started.elapsed());
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        at
    };
    // A wait only: the time to steady state is taken from the samples of the whole run
    // (this polling begins at /ready and needs a second of samples of its own).
    let _ = wait_steady_by(
        &|| farm.requests(),
        targets,
        m.started,
        Duration::from_secs(60),
    );
    // DNS latency during the start: from spawn to two intervals after steady.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut lat = dns_lat.join().unwrap();
    lat.sort_by(f64::total_cmp);
    m.assert_alive();
    let (user0, sys0, _, _) = usage_split(pid);
    let cpu0 = user0 + sys0;
    let load0 = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (t0, r0) = (Instant::now(), farm.requests());
    let p0 = metric(m.admin, "meridian_probes_total", "");
    std::thread::sleep(Duration::from_secs(seconds));
    let (user1, sys1, rss, hwm) = usage_split(pid);
    let cpu1 = user1 + sys1;
    let (t1, r1) = (Instant::now(), farm.requests());
    let p1 = metric(m.admin, "meridian_probes_total", "");
    m.assert_alive();
    let wall = t1.duration_since(t0).as_secs_f64();
    let down = metric(m.admin, "meridian_health_transitions_total", "to=\"down\"");
    let errors = metric(m.admin, "meridian_probe_errors_total", "");
    let (steady, first) = steady_from_samples(&samples(), targets);
    let kind = if kind == Kind::Http { "http" } else { "tcp" };
    println!(
        "load {kind} targets={targets} first_probe_s={:.2} ready_s={:.2} steady_s={:.2} \
         steady_after_first_s={:.2} cpu_share={:.3} \
         rss_mib={rss:.1} hwm_mib={hwm:.1} probes_per_s={:.0} (meridian: {:.0}) connections={} \
         false_down={} own_errors={} dns_tcp_ms_p50={:.2} p99={:.2} max={:.2} n={} \
         user_share={:.3} system_share={:.3} loadavg={}",
        first.unwrap_or(f64::NAN),
        ready_at.map_or(f64::NAN, |d| d.as_secs_f64()),
        steady.unwrap_or(f64::NAN),
        steady.zip(first).map_or(f64::NAN, |(s, f)| s - f),
        (cpu1 - cpu0) / wall,
        (r1 - r0) as f64 / wall,
        (p1 - p0) / wall,
        farm.accepts(),
        down.abs(),
        errors.abs(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len(),
        (user1 - user0) / wall,
        (sys1 - sys0) / wall,
        load0.split_whitespace().next().unwrap_or("?"),
    );
}

fn flap(meridian: &Path, targets: usize, seconds: u64, loss: f64) {
    for (name, fast) in [
        ("fast_interval=1s (as before)", "1s"),
        ("fast_interval=250ms (default)", "250ms"),
    ] {
        let farm = Farm::start(targets, Kind::Http);
        let m = start(
            meridian,
            &config(
                &farm,
                Kind::Http,
                &format!("timeout = \"500ms\"\nrise = 2\nfall = 2\nfast_interval = \"{fast}\"\n"),
            ),
        );
        wait_steady(&farm, targets, m.started, Duration::from_secs(60));
        let down0 = metric(m.admin, "meridian_health_transitions_total", "to=\"down\"");
        let r0 = farm.requests();
        farm.set_loss(loss);
        std::thread::sleep(Duration::from_secs(seconds));
        let down1 = metric(m.admin, "meridian_health_transitions_total", "to=\"down\"");
        let probes = farm.requests() - r0;
        let per_target_hour = (down1 - down0) / targets as f64 * 3600.0 / seconds as f64;
        println!(
            "flap {name} targets={targets} loss={loss} seconds={seconds} withdrawals={} \
             per_target_per_hour={per_target_hour:.1} probes={probes}",
            (down1 - down0).abs()
        );
    }
}

fn withdraw(meridian: &Path, targets: usize) {
    let farm = Farm::start(targets, Kind::Http);
    let m = start(
        meridian,
        &config(
            &farm,
            Kind::Http,
            "timeout = \"500ms\"\nrise = 2\nfall = 2\n",
        ),
    );
    wait_steady(&farm, targets, m.started, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 1000));
    // Every backend stops answering at once (probes time out: the slow worst case).
    farm.hang_below(targets as u32);
    let hung_at = Instant::now();
    let mut times: Vec<f64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < targets && hung_at.elapsed() < Duration::from_secs(30) {
        let body = get(m.admin, "/metrics").1;
        let t = hung_at.elapsed().as_secs_f64();
        for l in body.lines() {
            if l.starts_with("meridian_health_transitions_total")
                && l.contains("to=\"down\"")
                && let Some(a) = l
                    .split("address=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                && seen.insert(a.to_string())
            {
                times.push(t);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "withdraw targets={targets} interval=1s fall=2 timeout=500ms withdrawn={} \
         p50_s={:.3} max_s={:.3} (polled every ~10 ms)",
        times.len(),
        percentile(&times, 0.5),
        times.last().copied().unwrap_or(f64::NAN)
    );
}

/// A webhook receiver on 127.0.0.1:0: answers every POST with 200 (keep-alive) and counts the
/// `target_state_changed` documents by (address, to).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), u32>>>,
    posts: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let posts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, p) = (seen.clone(), posts.clone());
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { continue };
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || serve_hook(sock, &s, &p));
            }
        });
        Receiver { addr, seen, posts }
    }

    /// Returns how many documents went to `to`, and the most any one address got.
    fn count(&self, to: &str) -> (usize, u32) {
        let seen = self.seen.lock().unwrap();
        let it = seen.iter().filter(|((_, t), _)| t == to);
        let n = it.clone().count();
        (n, it.map(|(_, n)| *n).max().unwrap_or(0))
    }
}

fn serve_hook(
    mut sock: TcpStream,
    seen: &std::sync::Mutex<std::collections::HashMap<(String, String), u32>>,
    posts: &std::sync::atomic::AtomicU64,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // One request: head, then content-length bytes of body.
        let (head_end, len) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (i + 4, len);
            }
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_end + len {
            match sock.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: serde_json::Value =
            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
        buf.drain(..head_end + len);
        posts.fetch_add(1, Ordering::Relaxed);
        if body["event"] == "target_state_changed" {
            let key = (
                body["address"].as_str().unwrap_or("").to_string(),
                body["to"].as_str().unwrap_or("").to_string(),
            );
            *seen.lock().unwrap().entry(key).or_insert(0) += 1;
        }
        if sock
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Every target of a healthy farm fails at once (503 to every probe: fall 2 withdraws each
/// within about an interval): the transitions metric must count each exactly once, and the
/// webhook must receive each exactly once. Bounded: 300 s for the deliveries.
fn burst(meridian: &Path, targets: usize) {
    let hook = Receiver::start();
    let mut farm = Farms::start(targets, Kind::Http);
    let mut text = config_for(
        &farm.addrs,
        farm.local.port,
        Kind::Http,
        "timeout = \"500ms\"\nrise = 2\nfall = 2\n",
    );
    text = text.replacen(
        "[[zone]]",
        &format!(
            "[notify]\nwebhook_url = \"http://{}/hook\"\ntimeout = \"5s\"\nretries = 3\n[[zone]]",
            hook.addr
        ),
        1,
    );
    let mut m = start(meridian, &text);
    let bound = Duration::from_secs(300);
    let wait = |what: &str, f: &dyn Fn() -> bool| -> Duration {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < bound, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
        t.elapsed()
    };
    // The start: every target goes up once (posted too).
    let up = wait("every target up, posted", &|| hook.count("up").0 >= targets);
    m.assert_alive();
    let up_metric = metric(m.admin, "meridian_health_transitions_total", "to=\"up\"");
    // The burst.
    farm.set_loss(1.0);
    let t = Instant::now();
    let counted = wait("every transition to down counted", &|| {
        metric(m.admin, "meridian_health_transitions_total", "to=\"down\"") >= targets as f64
    });
    wait("every transition to down posted", &|| {
        hook.count("down").0 >= targets
    });
    let posted = t.elapsed();
    // Anything more would show up now (a duplicate or a late extra).
    std::thread::sleep(Duration::from_secs(3));
    m.assert_alive();
    let down_metric = metric(m.admin, "meridian_health_transitions_total", "to=\"down\"");
    let (down_posted, most) = hook.count("down");
    let (up_posted, most_up) = hook.count("up");
    println!(
        "burst targets={targets} up: posted={up_posted} (most per address {most_up}) \
         metric={up_metric} after {:.1} s; down: metric={down_metric} posted={down_posted} \
         (most per address {most}) counted after {:.1} s, posted after {:.1} s; posts={} \
         exact={}",
        up.as_secs_f64(),
        counted.as_secs_f64(),
        posted.as_secs_f64(),
        hook.posts.load(Ordering::Relaxed),
        down_metric == targets as f64
            && down_posted == targets
            && most == 1
            && up_posted == targets
            && most_up == 1,
    );
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes only the struct passed by pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The kernel's share of a TCP check: one thread checks every target once a second with
/// nothing but the system calls a check needs (socket, non-blocking connect, poll, SO_ERROR,
/// close with a reset), against the same farm. Its CPU is what any TCP prober pays here; on
/// loopback it includes the farm side's handshake, which the kernel runs in the connecting
/// thread.
fn floor(targets: usize, seconds: u64) {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::AsRawFd;
    let farm = Farms::start(targets, Kind::Tcp);
    let addrs: Vec<SocketAddr> = farm
        .addrs
        .iter()
        .map(|a| SocketAddr::new(*a, farm.local.port))
        .collect();
    let check = |addr: &SocketAddr| -> bool {
        let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None) else {
            return false;
        };
        let _ = s.set_linger(Some(Duration::ZERO));
        match s.connect(&(*addr).into()) {
            Ok(()) => return true,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(_) => return false,
        }
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 500) };
        n == 1 && matches!(s.take_error(), Ok(None))
    };
    // One round per second, each target at its own slot (batches of 1 ms).
    let run = |rounds: u64| -> (f64, f64, u64) {
        let (t0, c0) = (Instant::now(), thread_cpu());
        let mut ok = 0u64;
        let per_ms = targets.div_ceil(1000);
        for round in 0..rounds {
            for (i, chunk) in addrs.chunks(per_ms).enumerate() {
                let due = t0 + Duration::from_secs(round) + Duration::from_millis(i as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                ok += chunk.iter().filter(|a| check(a)).count() as u64;
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        ((thread_cpu() - c0) / wall, ok as f64 / wall, ok)
    };
    run(2);
    let (share, rate, ok) = run(seconds);
    println!(
        "floor tcp targets={targets} seconds={seconds} cpu_share={share:.3} checks_per_s={rate:.0} \
         passed={ok} loadavg={}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
}
