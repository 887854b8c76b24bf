//! Wiring: load config into a snapshot, bind sockets, spawn DNS, probes and admin, handle
//! signals, reload, and shut down in order (DNS first, then probes, then admin).
//!
//! Key types: [`Snapshot`] (everything the answer path reads, immutable, swapped whole on
//! reload) and [`App`] (the shared handles).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name, RecordType};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::dns::{self, Answerer, Services};
use crate::geo::Geo;
use crate::health::{Health, HealthView};
use crate::metrics::Metrics;
use crate::zone::Zones;

/// How long shutdown waits for tasks before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything the answer path reads: built whole, never mutated, swapped on reload.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Static zones.
    pub zones: Zones,
    /// GeoIP database and CIDR overrides.
    pub geo: Geo,
    /// Dynamic names.
    pub services: Services,
}

/// Reads, validates and builds a snapshot from the config file at `path`; reports every
/// problem found (config keys, zone files, GeoIP database).
pub fn load_snapshot(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let config = config::load(path)?;
    build_snapshot(config)
}

/// Checks everything `meridian check` checks: the config, zone files and GeoIP database (as
/// [`load_snapshot`]), and the state file of operator drains, which `serve` refuses to start
/// with when it is corrupt.
pub fn check(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let snapshot = load_snapshot(path)?;
    if let Some(state) = &snapshot.config.server.state_file
        && let Err(e) = crate::health::Overrides::load(state)
    {
        let key = "server.state_file";
        return Err(ConfigErrors(vec![ConfigError::new(
            &snapshot.config.source,
            key,
            e.to_string(),
        )]));
    }
    Ok(snapshot)
}

/// Builds a snapshot from a validated config.
pub fn build_snapshot(config: Config) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let dynamic: Vec<String> = config.services.iter().map(|s| s.name.clone()).collect();
    let zones = match Zones::load(&config.zones, &dynamic, &config.source) {
        Ok(z) => Some(z),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    if let Some(zones) = &zones {
        for (i, s) in config.services.iter().enumerate() {
            let Ok(name) = Name::from_ascii(&s.name) else {
                continue;
            };
            let lower = LowerName::new(&name);
            if let Some(zone) = zones.zone_for(&lower) {
                for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
                    if zone.has_static(&lower, t) {
                        errors.push(ConfigError::new(
                            &config.source,
                            format!("service[{i}].name"),
                            format!("{} also has static {t} records in its zone file: remove them, the service answers {t}", s.name),
                        ));
                    }
                }
            }
        }
    }
    let geo = match Geo::open(config.server.geoip.as_deref(), &config.nets) {
        Ok(g) => Some(g),
        Err(e) => {
            errors.push(ConfigError::new(
                &config.source,
                "server.geoip",
                e.to_string(),
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let services = Services::new(&config);
    Ok(Snapshot {
        config: Arc::new(config),
        // Invariant: both are Some when no error was recorded above.
        zones: zones.expect("zones loaded"),
        geo: geo.expect("geo opened"),
        services,
    })
}

/// The shared handles of a running server.
#[derive(Debug, Clone)]
pub struct App {
    /// The config file, re-read on reload.
    pub config_path: PathBuf,
    /// The current snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Probes, their state and the operator's drains.
    pub health: Health,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The fleet, with `[cluster]`: drains go through the store.
    pub cluster: Option<crate::cluster::Cluster>,
}

impl App {
    /// Re-reads the config file; on success swaps in the new snapshot, on failure keeps the
    /// old one and returns the errors.
    ///
    /// Both paths (SIGHUP and `POST /reload`) come here: reloads are serialized and counted in
    /// `meridian_config_reloads_total{result}`.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        static RELOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = RELOAD.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_unlocked();
        self.metrics.count_reload(result.is_ok());
        result
    }

    fn reload_unlocked(&self) -> Result<(), ConfigErrors> {
        let mut snapshot = load_snapshot(&self.config_path)?;
        snapshot.services.count_answers_in(&self.metrics);
        for w in snapshot.config.warnings() {
            warn!("{w}");
        }
        let old = self.snapshot.load();
        if old.config.server.dns_listen != snapshot.config.server.dns_listen
            || old.config.server.admin_listen != snapshot.config.server.admin_listen
        {
            warn!("listen addresses changed: they take effect at the next restart");
        }
        if old.config.cluster != snapshot.config.cluster {
            warn!("[cluster] changed: it takes effect at the next restart");
        }
        let summary = self.health.reload(&snapshot.config);
        self.snapshot.store(Arc::new(snapshot));
        info!(config = %self.config_path.display(), ?summary, "configuration reloaded");
        Ok(())
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The health subsystem refused its state (a corrupt state file): a config problem (exit 2).
    #[error("{0}")]
    Health(crate::health::HealthError),
    /// The cluster store client cannot be set up (unreadable TLS files): exit 2.
    #[error("{0}")]
    Cluster(String),
}

/// Returns the admin URL this instance advertises to the fleet: `cluster.advertise_admin`,
/// else `http://` + the bound admin address.
fn server_cluster_admin(config: &Config, bound: Option<SocketAddr>) -> Option<String> {
    config
        .cluster
        .as_ref()
        .and_then(|c| c.advertise_admin.clone())
        .or_else(|| bound.map(|a| format!("http://{a}")))
}

/// How often drains are checked for expiry.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Ends expired drains until `token` is cancelled.
async fn expire_drains(health: Health, token: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                if let Err(error) = health.expire_drains(std::time::SystemTime::now()).await {
                    warn!(%error, "cannot end expired drains");
                }
            }
        }
    }
}

/// Runs the server on an already loaded snapshot until SIGTERM or SIGINT.
pub async fn serve(config_path: PathBuf, mut snapshot: Snapshot) -> anyhow::Result<()> {
    let server = snapshot.config.server.clone();
    let metrics = Arc::new(Metrics::default());
    snapshot.services.count_answers_in(&metrics);
    for w in snapshot.config.warnings() {
        warn!("{w}");
    }
    let token = CancellationToken::new();
    // Probes stop on their own token, after DNS has stopped answering.
    let health_token = CancellationToken::new();
    // Probes begin once the metrics and the webhook listen (below), so that no transition,
    // not even the first, goes uncounted.
    let health = Health::new(&snapshot.config, health_token.clone()).map_err(StartError::Health)?;
    let cluster = match &snapshot.config.cluster {
        Some(c) => Some(
            crate::cluster::Cluster::new(c, health.clone())
                .map_err(|e| StartError::Cluster(format!("cluster: {e}")))?,
        ),
        None => None,
    };
    let app = App {
        config_path,
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        health,
        metrics,
        cluster,
    };
    let answerer = Answerer {
        snapshot: app.snapshot.clone(),
        health: app.health.view_cell(),
        metrics: app.metrics.clone(),
    };
    let dns_tasks = TaskTracker::new();

    // Bind every socket before serving anything, so a bad address fails the start cleanly.
    let workers = server
        .udp_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in &server.dns_listen {
        let (sockets, listener) = bind_dns(*addr, workers)?;
        let bound = sockets[0].local_addr()?;
        info!("listening dns/udp {bound}");
        info!("listening dns/tcp {}", listener.local_addr()?);
        udp.extend(sockets);
        tcp.push(listener);
    }
    for s in udp {
        dns_tasks.spawn(dns::udp::serve(s, answerer.clone(), token.clone()));
    }
    for l in tcp {
        dns_tasks.spawn(dns::tcp::serve(
            l,
            answerer.clone(),
            token.clone(),
            server.tcp_idle_timeout,
            server.tcp_max_connections,
        ));
    }
    dns_tasks.close();
    // Admin last in the shutdown order: it has its own token and tracker.
    let admin_token = CancellationToken::new();
    let admin_tasks = TaskTracker::new();
    let admin_addr = crate::admin::start(&app, &admin_tasks, admin_token.clone()).await?;
    crate::notify::start(&app, &admin_tasks, admin_token.clone());
    // Drains with an expiry end by themselves, on every instance, store or no store.
    admin_tasks.spawn(expire_drains(app.health.clone(), admin_token.clone()));
    // The fleet task subscribes to transitions before probes begin, like the metrics feed.
    let cluster_token = CancellationToken::new();
    let cluster_task = app.cluster.clone().map(|c| {
        let advertised = server_cluster_admin(&app.snapshot.load().config, admin_addr);
        c.set_admin_url(advertised);
        tokio::spawn(c.run(cluster_token.clone()))
    });
    admin_tasks.close();
    app.health.begin(&app.snapshot.load().config);
    info!(version = env!("CARGO_PKG_VERSION"), "meridian started");

    wait_for_signals(&app).await?;
    info!("shutting down");
    token.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, dns_tasks.wait())
        .await
        .is_err()
    {
        warn!("dns tasks did not stop in time");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, app.health.shutdown())
        .await
        .is_err()
    {
        warn!("health probes did not stop in time");
    }
    // Leaving the fleet revokes the lease: the others stop counting this instance's votes.
    cluster_token.cancel();
    if let Some(task) = cluster_task
        && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
    {
        warn!("cluster task did not stop in time");
    }
    admin_token.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, admin_tasks.wait())
        .await
        .is_err()
    {
        warn!("admin tasks did not stop in time");
    }
    info!("stopped");
    Ok(())
}

/// Binds UDP and TCP on the same port. With port 0 the UDP bind picks the port, and the TCP
/// bind may find it taken (by some other TCP socket): then both are retried on a new port.
fn bind_dns(
    addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, tokio::net::TcpListener)> {
    const ATTEMPTS: usize = 20;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sockets = dns::udp::bind(addr, workers)
            .with_context(|| format!("failed to bind dns/udp on {addr}"))?;
        let tcp_addr = SocketAddr::new(addr.ip(), sockets[0].local_addr()?.port());
        match bind_tcp(tcp_addr) {
            Ok(listener) => return Ok((sockets, listener)),
            Err(e)
                if addr.port() == 0
                    && attempt < ATTEMPTS
                    && e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => {
                return Err(e).with_context(|| format!("failed to bind dns/tcp on {tcp_addr}"));
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Waits for SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
async fn wait_for_signals(app: &App) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                if let Err(errors) = app.reload() {
                    for e in &errors.0 {
                        warn!(error = %e, "reload failed, keeping the old configuration");
                    }
                }
            }
        }
    }
}

/// Why `explain` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The config is invalid.
    #[error("{0}")]
    Config(ConfigErrors),
    /// The name is not a service.
    #[error("{0} is not a service name (static names are answered from the zone file)")]
    NotAService(String),
    /// The type is not A or AAAA.
    #[error("type {0:?} is not answered by services: use A or AAAA")]
    BadType(String),
}

/// Explains how `name`/`qtype` would be answered for a client at `client` (taken as the
/// resolver's address, or an ECS subnet's), from `snapshot` and `health`.
pub fn explain_in(
    snapshot: &Snapshot,
    health: &HealthView,
    client: std::net::IpAddr,
    name: &str,
    qtype: &str,
) -> Result<crate::policy::Explanation, ExplainError> {
    let family = match qtype.to_ascii_uppercase().as_str() {
        "A" => crate::policy::Family::V4,
        "AAAA" => crate::policy::Family::V6,
        _ => return Err(ExplainError::BadType(qtype.to_string())),
    };
    let service = snapshot
        .services
        .get(name)
        .ok_or_else(|| ExplainError::NotAService(name.to_string()))?;
    let located = snapshot.geo.locate(client);
    let c = crate::policy::Client {
        located: &located,
        ecs_source_prefix: None,
    };
    Ok(service.explain(&c, family, health, rand::random()))
}

/// Explains a decision from the config file alone (no probes run: every target counts as
/// unknown, i.e. up; drains in the state file are applied).
pub fn explain(
    config: &Path,
    client: std::net::IpAddr,
    name: &str,
    qtype: &str,
) -> Result<String, ExplainError> {
    let snapshot = load_snapshot(config).map_err(ExplainError::Config)?;
    let mut health = HealthView::empty();
    if let Some(state) = &snapshot.config.server.state_file
        && let Ok(o) = crate::health::Overrides::load(state)
    {
        for r in &o.drained_regions {
            health = health.with_drained(r);
        }
        for a in &o.drained_targets {
            health = health.with_drained_target(*a);
        }
    }
    let e = explain_in(&snapshot, &health, client, name, qtype)?;
    Ok(format!(
        "{e}\n(no probes were run: every target counts as unknown, i.e. up)\n"
    ))
}
