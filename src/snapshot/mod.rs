//! The snapshot: everything the answer path reads, built whole from the config file, never
//! mutated, and swapped in on reload.
//!
//! Owns loading (parse → validate → zone files, GeoIP database, compiled services), what
//! `meridian check` checks, the reload that replaces the live snapshot ([`Reloader`]), and
//! `explain` (the policy's decision trace for one name and client). Sits below `dns/`,
//! `admin/` and `notify`, which read it; it never imports them.
//!
//! Key types: [`Snapshot`], [`Services`] (the dynamic names keyed by wire form),
//! [`Reloader`], [`ExplainError`].

mod certs;
mod services;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hickory_proto::rr::{LowerName, Name, RecordType};
use tracing::{info, warn};

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::geo::Geo;
use crate::health::{Health, HealthView, Overrides};
use crate::metrics::Metrics;
use crate::policy::{Explanation, Family};
use crate::zone::Zones;

pub(crate) use services::{Dynamic, Services};

/// Everything the answer path reads: built whole, never mutated, swapped on reload.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Static zones.
    pub(crate) zones: Zones,
    /// GeoIP database and CIDR overrides.
    pub(crate) geo: Geo,
    /// Dynamic names.
    pub(crate) services: Services,
    /// The DNS-over-TLS certificate and key, read from `server.tls_certificate`/`tls_key`
    /// when this snapshot was built: a reload re-reads them, and the next handshake uses them.
    pub(crate) tls: Option<Arc<rustls::sign::CertifiedKey>>,
    /// The admin port's HTTPS setup (certificate, client CA), read from
    /// `server.admin_tls_*` when this snapshot was built; `None` without admin TLS. The admin
    /// server handshakes each new connection with the live snapshot's.
    pub(crate) admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// Prebuilt wire answers to the (name, type) pairs of the zone files, filled once by a
    /// background thread that `dns/` starts when it first meets this snapshot (issue 18).
    pub(crate) static_answers: StaticAnswers,
}

/// The lowercased wire name followed by the QTYPE -> the response to the plain query (ID 0, no
/// flags, no EDNS), as `dns/`'s answer cache keeps it.
///
/// A hash table written for this one use (issue 18): with 100,000 records, `std`'s table cost
/// three cache misses per lookup (its control bytes, the slot, the boxed entry). Here a lookup
/// reads one slot (8 bytes: a tag from the key's hash and the entry's offset; linear probing at
/// most half full, so the next slots are usually in the same line) and then the entry, whose
/// key and answer are adjacent in one arena. Filled once per snapshot from the zone files,
/// never changed while read. The hash is `std`'s keyed SipHash, random per table: query names
/// are chosen by whoever asks, and must not be able to aim at long probe runs.
#[derive(Debug, Default)]
pub(crate) struct AnswerTable {
    /// Per slot: the tag (high 32 bits, never 0) and the entry's offset in `arena` (low 32
    /// bits); 0 is an empty slot. A power of two in length, or empty.
    slots: Box<[u64]>,
    /// Entries back to back: the key's length and the answer's length (2 bytes each,
    /// little-endian), the key, the answer.
    arena: Vec<u8>,
    len: usize,
    /// Bytes of the live entries' keys and answers.
    bytes: usize,
    hasher: std::hash::RandomState,
}

impl AnswerTable {
    /// Returns an empty table.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Returns the slot's tag and the first slot to probe for `key`.
    fn hash(&self, key: &[u8]) -> (u64, usize) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(key);
        (
            (h >> 32 | 1) << 32,
            h as usize & (self.slots.len().wrapping_sub(1)),
        )
    }

    /// Returns the (key, answer) of the entry at `offset`.
    fn entry(&self, offset: usize) -> Option<(&[u8], &[u8])> {
        let head = self.arena.get(offset..offset + 4)?;
        let k = usize::from(u16::from_le_bytes([head[0], head[1]]));
        let a = usize::from(u16::from_le_bytes([head[2], head[3]]));
        let key = self.arena.get(offset + 4..offset + 4 + k)?;
        let answer = self.arena.get(offset + 4 + k..offset + 4 + k + a)?;
        Some((key, answer))
    }

    /// Returns the index of the slot holding `key`, or of the empty slot where it would go.
    fn find(&self, key: &[u8]) -> usize {
        let (tag, mut i) = self.hash(key);
        let mask = self.slots.len() - 1;
        // The table is at most half full: an empty slot ends every probe.
        loop {
            let slot = self.slots[i];
            if slot == 0
                || (slot & !0xFFFF_FFFF == tag
                    && self
                        .entry((slot & 0xFFFF_FFFF) as usize)
                        .is_some_and(|(k, _)| k == key))
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds (or replaces) the answer of `key`; a key or an answer longer than 65,535 bytes
    /// (never a name and type, nor a DNS message) is not stored, nor is anything once the
    /// arena holds 4 GiB.
    pub(crate) fn insert(&mut self, key: &[u8], answer: &[u8]) {
        let (Ok(k), Ok(a)) = (u16::try_from(key.len()), u16::try_from(answer.len())) else {
            return;
        };
        let Ok(offset) = u32::try_from(self.arena.len()) else {
            return;
        };
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.arena.extend_from_slice(&k.to_le_bytes());
        self.arena.extend_from_slice(&a.to_le_bytes());
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(answer);
        let i = self.find(key);
        let old = self.slots[i];
        if old == 0 {
            self.len += 1;
        } else if let Some((k, a)) = self.entry((old & 0xFFFF_FFFF) as usize) {
            // Replaced: its bytes stay in the arena, unused (the zone files give each
            // (name, type) once; only tests replace).
            self.bytes -= k.len() + a.len();
        }
        self.bytes += key.len() + answer.len();
        self.slots[i] = self.hash(key).0 | u64::from(offset);
    }

    /// Doubles the slots (at least 1,024) and places every entry again.
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![0u64; n].into_boxed_slice());
        for slot in old.iter().filter(|s| **s != 0) {
            let Some((key, _)) = self.entry((slot & 0xFFFF_FFFF) as usize) else {
                continue;
            };
            let i = self.find(key);
            self.slots[i] = *slot;
        }
    }

    /// Returns the answer of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        if self.slots.is_empty() {
            return None;
        }
        let slot = self.slots[self.find(key)];
        if slot == 0 {
            return None;
        }
        self.entry((slot & 0xFFFF_FFFF) as usize).map(|(_, a)| a)
    }

    /// Returns true when `key` has an answer.
    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Returns the number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Returns the bytes of the keys and answers.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees the arena's spare capacity.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
    }
}

/// A snapshot's table of prebuilt static answers: empty until built, then never changed.
/// Built and read by `dns/` (the snapshot knows nothing of DNS messages); a lock-free read.
#[derive(Debug, Default)]
pub(crate) struct StaticAnswers {
    started: std::sync::atomic::AtomicBool,
    table: std::sync::OnceLock<AnswerTable>,
}

impl StaticAnswers {
    /// Returns true once, to the one caller that is to build the table.
    pub(crate) fn claim_build(&self) -> bool {
        !self.started.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Installs the built table (a second call changes nothing).
    pub(crate) fn install(&self, table: AnswerTable) {
        let _ = self.table.set(table);
    }

    /// Returns the table, once built.
    pub(crate) fn get(&self) -> Option<&AnswerTable> {
        self.table.get()
    }
}

/// The live snapshot, shared by the answer path, the admin port and notifications.
pub(crate) type SnapshotCell = Arc<ArcSwap<Snapshot>>;

/// Reads, validates and builds a snapshot from the config file at `path`; reports every
/// problem found (config keys, zone files, GeoIP database).
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let config = config::load(path)?;
    build(config)
}

/// Checks everything `meridian check` checks: the config, zone files and GeoIP database (as
/// [`load`]), and the state file of operator drains, which `serve` refuses to start with when
/// it is corrupt.
pub fn check(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let snapshot = load(path)?;
    if let Some(state) = &snapshot.config.server.state_file
        && let Err(e) = Overrides::load(state)
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
pub(crate) fn build(config: Config) -> Result<Snapshot, ConfigErrors> {
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
        for s in &config.services {
            let Ok(name) = Name::from_ascii(&s.name) else {
                continue;
            };
            let lower = LowerName::new(&name);
            if let Some(zone) = zones.zone_for(&lower) {
                for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
                    if zone.has_static(&lower, t) {
                        errors.push(ConfigError::new(
                            &config.source,
                            format!("{}.name", config::service_key(0, Some(&s.name))),
                            format!("{} also has static {t} records in its zone file: remove them, the service answers {t}", s.name),
                        ));
                    }
                }
            }
        }
    }
    let transition = crate::geo::Transition {
        enabled: config.server.ipv6_transition,
        nat64_prefixes: config.server.nat64_prefixes.clone(),
    };
    let geo = match Geo::open(config.server.geoip.as_deref(), &config.nets, &transition) {
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
    let tls = match (&config.server.tls_certificate, &config.server.tls_key) {
        (Some(cert), Some(key)) => match certs::load_certified_key(cert, key) {
            Ok(k) => Some(Arc::new(k)),
            Err((key_name, e)) => {
                errors.push(ConfigError::new(&config.source, key_name, e));
                None
            }
        },
        _ => None,
    };
    let server = &config.server;
    let admin_tls = match (&server.admin_tls_certificate, &server.admin_tls_key) {
        (Some(cert), Some(key)) => {
            match certs::admin_server_config(cert, key, server.admin_client_ca.as_deref()) {
                Ok(c) => Some(Arc::new(c)),
                Err((key_name, e)) => {
                    errors.push(ConfigError::new(&config.source, key_name, e));
                    None
                }
            }
        }
        _ => None,
    };
    let (Some(zones), Some(geo), true) = (zones, geo, errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };
    let services = Services::new(&config);
    Ok(Snapshot {
        config: Arc::new(config),
        zones,
        geo,
        services,
        tls,
        admin_tls,
        static_answers: StaticAnswers::default(),
    })
}

/// Builds the widest-ECS-scope maps of `snapshot`'s services on a background thread and
/// installs them as they are ready (until then answers carry the matched network's scope).
/// The build stops early when the snapshot is replaced. Called at start and on every reload.
fn start_scope_maps(snapshot: &Snapshot) {
    let jobs = crate::policy::ScopeJobs::new(snapshot.services.iter());
    if jobs.is_empty() {
        return;
    }
    let geo = snapshot.geo.clone();
    let spawned = std::thread::Builder::new()
        .name("scope-maps".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let result = jobs.run(&geo);
            drop(jobs);
            release_freed_memory();
            match result {
                Ok(Some(r)) => info!(
                    maps = r.maps,
                    networks = r.networks,
                    records = r.records,
                    decisions = r.decisions,
                    runs_v4 = r.runs_v4,
                    runs_v6 = r.runs_v6,
                    bytes = r.bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "ecs scope maps ready"
                ),
                Ok(None) => info!("ecs scope maps abandoned: the configuration was replaced"),
                Err(error) => warn!(
                    %error,
                    "ecs scope maps not built: answers keep the matched network's scope"
                ),
            }
        });
    if let Err(error) = spawned {
        warn!(%error, "cannot start the ecs scope map thread: answers keep the matched network's scope");
    }
}

/// Readies a loaded snapshot to serve, at start and on every reload: attaches its answer
/// counters from `metrics`, logs the config's warnings, and starts building its ECS scope maps.
pub(crate) fn activate(mut snapshot: Snapshot, metrics: &Metrics) -> Arc<Snapshot> {
    snapshot.services.count_answers_in(metrics);
    for w in snapshot.config.warnings() {
        warn!("{w}");
    }
    let snapshot = Arc::new(snapshot);
    let weak: std::sync::Weak<Snapshot> = Arc::downgrade(&snapshot);
    metrics.watch_pending_answers(weak);
    start_scope_maps(&snapshot);
    snapshot
}

impl crate::metrics::PendingAnswers for Snapshot {
    fn flush_answers(&self) {
        self.services.flush_answers();
    }
}

/// Replaces the live snapshot from the config file: what SIGHUP and `POST /reload` run.
#[derive(Debug, Clone)]
pub(crate) struct Reloader {
    config_path: PathBuf,
    snapshot: SnapshotCell,
    health: Health,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Returns a reloader of `snapshot` from `config_path`, which also moves `health`'s probes
    /// to each new config and counts reloads in `metrics`.
    pub(crate) fn new(
        config_path: PathBuf,
        snapshot: SnapshotCell,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config_path,
            snapshot,
            health,
            metrics,
        }
    }

    /// Returns the config file reloads read.
    pub(crate) fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Re-reads the config file; on success swaps in the new snapshot, on failure keeps the
    /// old one and returns the errors. Blocks on file I/O: call it from a blocking thread.
    ///
    /// Both paths (SIGHUP and `POST /reload`) come here: reloads are serialized and counted in
    /// `meridian_config_reloads_total{result}`.
    pub(crate) fn reload(&self) -> Result<(), ConfigErrors> {
        static RELOAD: Mutex<()> = Mutex::new(());
        let _one_at_a_time = RELOAD.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.reload_unlocked();
        self.metrics.count_reload(result.is_ok());
        result
    }

    fn reload_unlocked(&self) -> Result<(), ConfigErrors> {
        let snapshot = load(&self.config_path)?;
        let old = self.snapshot.load();
        if old.config.server.dns_listen != snapshot.config.server.dns_listen
            || old.config.server.admin_listen != snapshot.config.server.admin_listen
        {
            warn!("listen addresses changed: they take effect at the next restart");
        }
        if old.config.server.probe_threads != snapshot.config.server.probe_threads {
            warn!("server.probe_threads changed: it takes effect at the next restart");
        }
        if old.config.server.udp_workers != snapshot.config.server.udp_workers
            || old.config.server.udp_receive_buffer != snapshot.config.server.udp_receive_buffer
        {
            warn!(
                "server.udp_workers or server.udp_receive_buffer changed: it takes effect at the next restart"
            );
        }
        if old.admin_tls.is_some() != snapshot.admin_tls.is_some() {
            warn!(
                "admin TLS turned {}: it takes effect at the next restart (until then the admin port keeps {})",
                if snapshot.admin_tls.is_some() {
                    "on"
                } else {
                    "off"
                },
                if old.admin_tls.is_some() {
                    "HTTPS with the last certificate"
                } else {
                    "plain HTTP"
                }
            );
        }
        if old.config.cluster != snapshot.config.cluster {
            warn!("[cluster] changed: it takes effect at the next restart");
        }
        let config = snapshot.config.clone();
        // The snapshot first, then the health view derived from its config. The answer path
        // loads the two cells independently, so between the two stores it pairs one new cell
        // with one old. A view built for the new config no longer holds the targets the new
        // config dropped, and a view asked about a target it does not hold says `unknown`,
        // answered as up: the other order would let the old snapshot answer a removed target
        // that is down or being probed down. In this order the new snapshot meets the old
        // view: targets both configs have keep their state, and targets only the new one has
        // are `unknown` in either view. Drains are by name and in both views alike.
        self.snapshot.store(activate(snapshot, &self.metrics));
        let summary = self.health.reload(&config);
        info!(config = %self.config_path.display(), ?summary, "configuration reloaded");
        // The old snapshot goes with the last answer that holds it, now or in a moment.
        drop(old);
        release_freed_memory();
        Ok(())
    }
}

/// Hands memory freed inside the heap back to the system: mimalloc's (the `meridian` binary's
/// allocator) and glibc's (`malloc_trim`, for what C code allocates, and for a program that
/// uses this library with the system allocator).
///
/// Building a snapshot allocates while the old one is still alive, and the background builds
/// (scope maps, static answers) run on threads that end: with glibc the heaps stayed
/// fragmented (10,000 services and 100,000 static records, issue 18: RSS from 250 MB to 670
/// MB over five reloads), and mimalloc returns the pages of ended threads only when another
/// thread collects them. Called after a reload and when a background build has finished.
pub(crate) fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointer; `force` also frees what ended threads abandoned.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps, under their locks; 0 keeps no pad.
    unsafe {
        libc::malloc_trim(0);
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
pub(crate) fn explain_in(
    snapshot: &Snapshot,
    health: &HealthView,
    client: IpAddr,
    name: &str,
    qtype: &str,
) -> Result<Explanation, ExplainError> {
    let family = match qtype.to_ascii_uppercase().as_str() {
        "A" => Family::V4,
        "AAAA" => Family::V6,
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
    client: IpAddr,
    name: &str,
    qtype: &str,
) -> Result<String, ExplainError> {
    let snapshot = load(config).map_err(ExplainError::Config)?;
    // The widest scopes, as a running server has them once its maps are built. A database
    // that cannot be walked leaves the matched network's scope, as it would in the server.
    let _ = crate::policy::ScopeJobs::new(snapshot.services.iter()).run(&snapshot.geo);
    let mut health = HealthView::empty();
    if let Some(state) = &snapshot.config.server.state_file
        && let Ok(o) = Overrides::load(state)
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
