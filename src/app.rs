//! Wiring: bind sockets, spawn DNS, probes, admin and notifications on a loaded snapshot,
//! handle signals (SIGHUP reloads through [`crate::snapshot::Reloader`], off the async workers),
//! and shut down in order (DNS first, then probes, then admin).
//!
//! Everything else lives below: the snapshot and reload in [`crate::snapshot`], answering in
//! [`crate::dns`], the HTTP surface in [`crate::admin`]. Each of those gets the narrow handles
//! it needs, never a handle to the whole server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::dns::{self, Answerer};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::snapshot::{Reloader, Snapshot};

/// How long shutdown waits for tasks before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The runtime of probes and the admin port, apart from the one answering DNS over TCP, so that
/// a probe storm (10,000 targets starting) does not delay DNS (issue #17). Shut down without
/// blocking when dropped (dropping a runtime inside another one would panic).
struct SideRuntime(Option<tokio::runtime::Runtime>);

impl SideRuntime {
    /// Starts the runtime with `threads` workers (`server.probe_threads`).
    fn new(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("meridian-probe")
            .enable_all()
            .build()
            .context("cannot start the probe runtime")?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        // Invariant: the runtime is only taken out in `drop`.
        self.0.as_ref().expect("runtime present").handle().clone()
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
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
/// else `http://` (`https://` with admin TLS) + the bound admin address.
fn advertised_admin(config: &crate::config::Config, bound: Option<SocketAddr>) -> Option<String> {
    let scheme = if config.server.admin_tls_certificate.is_some() {
        "https"
    } else {
        "http"
    };
    config
        .cluster
        .as_ref()
        .and_then(|c| c.advertise_admin.clone())
        .or_else(|| bound.map(|a| format!("{scheme}://{a}")))
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
pub async fn serve(config_path: PathBuf, snapshot: Snapshot) -> anyhow::Result<()> {
    let server = snapshot.config.server.clone();
    let metrics = Arc::new(Metrics::default());
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
    let snapshot = Arc::new(ArcSwap::new(crate::snapshot::activate(snapshot, &metrics)));
    let reloader = Reloader::new(
        config_path,
        snapshot.clone(),
        health.clone(),
        metrics.clone(),
    );
    let query_log =
        crate::query_log::QueryLog::start(snapshot.clone(), health.view_cell(), metrics.clone())
            .context("cannot start the query log thread")?;
    let answerer = Answerer {
        snapshot: snapshot.clone(),
        health: health.view_cell(),
        metrics: metrics.clone(),
        query_log,
    };
    let dns_tasks = TaskTracker::new();

    // Bind every socket before serving anything, so a bad address fails the start cleanly.
    let workers = server
        .udp_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in &server.dns_listen {
        let (sockets, listener) = bind_dns(*addr, workers, server.udp_receive_buffer)?;
        let bound = sockets[0].local_addr()?;
        info!("listening dns/udp {bound}");
        info!("listening dns/tcp {}", listener.local_addr()?);
        udp.extend(sockets);
        tcp.push(listener);
    }
    let mut dot = Vec::new();
    for addr in &server.tls_listen {
        let listener =
            bind_tcp(*addr).with_context(|| format!("failed to bind dns/tls on {addr}"))?;
        info!("listening dns/tls {}", listener.local_addr()?);
        dot.push(listener);
    }
    let mut doq = Vec::new();
    for addr in &server.quic_listen {
        let socket =
            bind_udp(*addr).with_context(|| format!("failed to bind dns/quic on {addr}"))?;
        info!("listening dns/quic {}", socket.local_addr()?);
        doq.push(socket);
    }
    // One rate limiter for every UDP socket: `[rate_limit]` holds per client network.
    let limiter = Arc::new(dns::rrl::Limiter::new());
    for s in udp {
        dns_tasks.spawn(dns::udp::serve(
            s,
            answerer.clone(),
            limiter.clone(),
            token.clone(),
        ));
    }
    // The same limits for plain TCP and DoT, counted per listener.
    let limits = dns::tcp::Limits {
        idle_timeout: server.tcp_idle_timeout,
        max_connections: server.tcp_max_connections,
        max_per_network: server.tcp_max_connections_per_network,
    };
    for l in tcp {
        dns_tasks.spawn(dns::tcp::serve(
            l,
            answerer.clone(),
            token.clone(),
            limits,
            None,
        ));
    }
    if !dot.is_empty() {
        let acceptor =
            dns::tls::acceptor(snapshot.clone()).context("cannot set up DNS over TLS")?;
        for l in dot {
            dns_tasks.spawn(dns::tcp::serve(
                l,
                answerer.clone(),
                token.clone(),
                limits,
                Some(acceptor.clone()),
            ));
        }
    }
    // DoQ on the runtime of TCP and DoT (never the UDP threads' nor the probes'), with their
    // limits, per listener.
    for socket in doq {
        let endpoint = dns::quic::endpoint(socket, snapshot.clone(), limits)
            .context("cannot set up DNS over QUIC")?;
        dns_tasks.spawn(dns::quic::serve(
            endpoint,
            answerer.clone(),
            token.clone(),
            limits,
        ));
    }
    dns_tasks.close();
    // Admin last in the shutdown order: it has its own token and tracker. Admin, webhook
    // and probes run on a runtime of their own.
    let side = SideRuntime::new(server.probe_threads)?;
    let admin_token = CancellationToken::new();
    let admin_tasks = TaskTracker::new();
    let admin = crate::admin::Handles {
        snapshot: snapshot.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        reloader: reloader.clone(),
        cluster: cluster.clone(),
    };
    let cluster_token = CancellationToken::new();
    let cluster_task = {
        let (health, snapshot) = (health.clone(), snapshot.clone());
        let (tasks, token) = (admin_tasks.clone(), admin_token.clone());
        let (cluster, cluster_token) = (cluster.clone(), cluster_token.clone());
        side.handle()
            .spawn(async move {
                // Before the admin port opens, so that no drain made through it is missed.
                let drain_events = health.subscribe_drains();
                let admin_addr = crate::admin::start(admin, &tasks, token.clone()).await?;
                // Drains with an expiry end by themselves, on every instance, store or no store.
                tasks.spawn(expire_drains(health.clone(), token.clone()));
                // The fleet task subscribes to transitions before probes begin, like the
                // metrics feed; it stops after the probes (it revokes the lease).
                let cluster_task = cluster.map(|c| {
                    c.set_admin_url(advertised_admin(&snapshot.load().config, admin_addr));
                    tokio::spawn(c.run(cluster_token))
                });
                let outages = crate::outage::start(
                    snapshot.clone(),
                    health.view_cell(),
                    &tasks,
                    token.clone(),
                );
                crate::notify::start(
                    health.subscribe(),
                    outages.subscribe(),
                    drain_events,
                    snapshot,
                    health.view_cell(),
                    &tasks,
                    token,
                );
                anyhow::Ok(cluster_task)
            })
            .await
            .context("admin start-up task failed")??
    };
    // The file watcher reloads like SIGHUP; it stops with the admin port, last.
    admin_tasks.spawn(crate::watch::run(
        reloader.clone(),
        snapshot.clone(),
        admin_token.clone(),
    ));
    admin_tasks.close();
    health.begin_on(&snapshot.load().config, side.handle());
    wait_for_signals(&reloader).await?;
    info!("shutting down");
    crate::sd_notify::notify("STOPPING=1");
    token.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, dns_tasks.wait())
        .await
        .is_err()
    {
        warn!("dns tasks did not stop in time");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, health.shutdown())
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
/// `receive_buffer`: see [`dns::udp::bind`].
fn bind_dns(
    addr: SocketAddr,
    workers: usize,
    receive_buffer: usize,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, tokio::net::TcpListener)> {
    const ATTEMPTS: usize = 20;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sockets = dns::udp::bind(addr, workers, receive_buffer)
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
    // Answers are written whole (`dns::tcp` batches them), so Nagle would only delay them.
    // Linux copies TCP_NODELAY to every accepted connection: one system call per listener
    // instead of one per connection (`dns::tcp` sets it per connection elsewhere).
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Binds a UDP socket for DoQ (IPv6 only on an IPv6 address, as [`bind_tcp`]).
fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Waits for SIGTERM or SIGINT; reloads on SIGHUP meanwhile.
async fn wait_for_signals(reloader: &Reloader) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    // Started only now that the signals are handled: a SIGTERM or SIGHUP sent by whoever waits
    // for this line (tests, systemd's Type=notify) must not meet the default action, which
    // kills the process.
    info!(version = env!("CARGO_PKG_VERSION"), "meridian started");
    crate::sd_notify::notify("READY=1");
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                // Reload reads and parses files (config, zones, GeoIP): a blocking thread does
                // it, so the async workers (TCP answers, admin, probes) never wait on the disk.
                // Signals meanwhile are queued by tokio and handled when it returns.
                let r = reloader.clone();
                match tokio::task::spawn_blocking(move || r.reload()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(errors)) => {
                        for e in &errors.0 {
                            warn!(error = %e, "reload failed, keeping the old configuration");
                        }
                    }
                    Err(error) => warn!(%error, "reload task failed, keeping the old configuration"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_dns_tcp_connections_have_nodelay_from_the_listener() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY inherited");
        drop(client);
    }
}
