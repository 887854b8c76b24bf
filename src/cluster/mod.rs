//! The fleet: drains and health shared by every instance through etcd (`[cluster]`).
//!
//! Owns the synchronization with the store, not the decisions: drains are applied by
//! [`crate::health::Health`] (which keeps the state file as this instance's cache of them), and
//! the vote on each target is the pure [`crate::health::quorum`] module. Key types: [`Cluster`] (the handle:
//! drains through the store, the fleet for `/status`, metrics) and [`etcd::Etcd`] (the client).
//!
//! Keys under `prefix` (values are JSON):
//!
//! | key                                   | value                          | lease           |
//! |---------------------------------------|--------------------------------|-----------------|
//! | `instances/NAME`                      | `{admin, started, heartbeat}`  | the instance's  |
//! | `health/NAME/CHECK/ADDRESS`           | `{state, since}`               | the instance's  |
//! | `drains/regions/REGION`               | [`Drain`]                      | expiry, if any  |
//! | `drains/targets/ADDRESS`              | [`Drain`]                      | expiry, if any  |
//!
//! One task ([`Cluster::run`]) reads everything once, grants this instance's lease, publishes
//! its presence and its own probe results (only on a change of state: a steady fleet writes
//! nothing but a heartbeat per lease period), then watches the prefix and renews the lease.
//! When the store is unreachable the instance keeps the last known drains and votes plus its
//! own probes, reports `meridian_cluster_connected 0`, retries with backoff, and on return
//! resumes the watch at the next revision (or reads everything again when that history was
//! compacted), re-publishing the results that changed meanwhile (all of them if its lease
//! expired). A drain asked for while the store is unreachable fails (the admin API answers
//! 503): a drain that reached one instance only is what this module exists to prevent.
//!
//! An instance whose lease is gone (killed, partitioned, stopped) loses its keys with it: the
//! others stop counting its votes. A stopping instance revokes its lease at once.

pub(crate) mod etcd;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Cluster as ClusterConfig;
use crate::health::overrides::{Drain, Overrides, Subject};
use crate::health::quorum::PeerVotes;
use crate::health::{Health, HealthError, State, TargetKey};
use etcd::{Etcd, EtcdError, Event};

/// `meridian_cluster_connected`: 1 while the store answers.
pub(crate) const CLUSTER_CONNECTED: &str = "meridian_cluster_connected";
/// `meridian_cluster_peers`: other instances whose lease is alive.
pub(crate) const CLUSTER_PEERS: &str = "meridian_cluster_peers";
/// `meridian_cluster_store_writes` (a counter, `_total` in the exposition): puts and deletes
/// this instance sent to the store.
pub(crate) const CLUSTER_STORE_WRITES: &str = "meridian_cluster_store_writes";
/// `meridian_target_local_up{check,address}`: 1 when this instance's own probes see the target
/// up (or not yet probed), beside `meridian_target_agreed_up`.
pub(crate) const TARGET_LOCAL_UP: &str = "meridian_target_local_up";
/// `meridian_target_agreed_up{check,address}`: 1 when the fleet's agreed state is not down.
pub(crate) const TARGET_AGREED_UP: &str = "meridian_target_agreed_up";

/// First wait before reconnecting to the store; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts to reach the store.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A failed fleet operation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// The store cannot be reached: nothing was changed anywhere.
    #[error(
        "the cluster store is unreachable, nothing was changed (a drain must reach every instance; retry when etcd is back): {0}"
    )]
    Unavailable(EtcdError),
    /// The drain is invalid or the local state file cannot be written.
    #[error(transparent)]
    Health(#[from] HealthError),
}

/// One instance's presence record (`instances/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct InstanceRecord {
    /// Its admin URL, for `meridian ctl`.
    #[serde(default)]
    pub admin: Option<String>,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub started: String,
    /// When it last wrote this record (RFC 3339).
    #[serde(default)]
    pub heartbeat: String,
}

/// One instance's vote on one target (`health/NAME/CHECK/ADDRESS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct VoteRecord {
    state: String,
    #[serde(default)]
    since: Option<String>,
}

/// One instance of the fleet, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct InstanceStatus {
    /// Its name.
    pub name: String,
    /// True for the instance answering.
    pub this: bool,
    /// Its admin URL.
    pub admin: Option<String>,
    /// When it started.
    pub started: String,
    /// When this instance last heard from it (RFC 3339; its heartbeat or a vote).
    pub last_seen: Option<String>,
    /// True while its lease is alive (as far as this instance knows).
    pub fresh: bool,
}

/// The fleet, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct FleetStatus {
    /// This instance's name.
    pub instance: String,
    /// True while the store answers.
    pub connected: bool,
    /// Why the store does not answer, while it does not.
    pub error: Option<String>,
    /// The quorum rule.
    pub quorum: String,
    /// The store's key prefix.
    pub prefix: String,
    /// The last store revision seen.
    pub revision: i64,
    /// Every instance known, this one included, by name.
    pub instances: Vec<InstanceStatus>,
}

/// The running fleet membership. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    etcd: Etcd,
    health: Health,
    connected: AtomicBool,
    writes: AtomicU64,
    started: SystemTime,
    fleet: Mutex<Fleet>,
}

/// What this instance knows of the store's contents.
#[derive(Debug, Default)]
struct Fleet {
    revision: i64,
    error: Option<String>,
    admin: Option<String>,
    /// Instances with a presence key (lease alive), this one included.
    instances: BTreeMap<String, InstanceRecord>,
    /// When each instance was last heard from (local clock).
    last_seen: BTreeMap<String, SystemTime>,
    /// Votes of the other instances.
    votes: BTreeMap<String, HashMap<TargetKey, State>>,
    /// The fleet's drains.
    drains: Overrides,
}

/// Parses a key under the prefix into what it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Instance(String),
    Vote(String, TargetKey),
    Drain(Subject),
}

impl Cluster {
    /// Builds the handle for `config` over `health`; nothing is sent until [`Cluster::run`].
    pub(crate) fn new(config: &ClusterConfig, health: Health) -> Result<Cluster, String> {
        let etcd = Etcd::new(config)?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                config: config.clone(),
                etcd,
                health,
                connected: AtomicBool::new(false),
                writes: AtomicU64::new(0),
                started: SystemTime::now(),
                fleet: Mutex::new(Fleet::default()),
            }),
        })
    }

    /// Sets the admin URL this instance advertises (`cluster.advertise_admin`, else
    /// `http://` + the bound admin address).
    pub(crate) fn set_admin_url(&self, url: Option<String>) {
        self.inner.lock().admin = url;
    }

    /// Returns this instance's name.
    pub(crate) fn instance(&self) -> &str {
        &self.inner.config.instance
    }

    /// Returns true while the store answers.
    pub(crate) fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Returns the number of other instances whose lease is alive.
    pub(crate) fn peers(&self) -> usize {
        let fleet = self.inner.lock();
        fleet
            .instances
            .keys()
            .filter(|n| **n != self.inner.config.instance)
            .count()
    }

    /// Returns the fleet for `/status`.
    pub(crate) fn status(&self) -> FleetStatus {
        let fleet = self.inner.lock();
        let me = &self.inner.config.instance;
        let mut names: Vec<&String> = fleet.instances.keys().collect();
        for n in fleet.last_seen.keys() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if !names.contains(&me) {
            names.push(me);
        }
        names.sort();
        let instances = names
            .into_iter()
            .map(|n| {
                let record = fleet.instances.get(n);
                let this = n == me;
                InstanceStatus {
                    name: n.clone(),
                    this,
                    admin: if this {
                        fleet.admin.clone()
                    } else {
                        record.and_then(|r| r.admin.clone())
                    },
                    started: if this {
                        crate::health::format_rfc3339(self.inner.started)
                    } else {
                        record.map(|r| r.started.clone()).unwrap_or_default()
                    },
                    last_seen: if this {
                        Some(crate::health::format_rfc3339(SystemTime::now()))
                    } else {
                        fleet
                            .last_seen
                            .get(n)
                            .map(|t| crate::health::format_rfc3339(*t))
                    },
                    fresh: this || record.is_some(),
                }
            })
            .collect();
        FleetStatus {
            instance: me.clone(),
            connected: self.is_connected(),
            error: fleet.error.clone(),
            quorum: self.inner.config.quorum.to_string(),
            prefix: self.inner.config.prefix.clone(),
            revision: fleet.revision,
            instances,
        }
    }

    /// Drains `subject` with `record` (`Some`) or undrains it (`None`) for the whole fleet:
    /// writes it to the store first (a drain with an expiry rides a lease of that length, so
    /// the store ends it even if every instance is down), then applies it here at once (the
    /// others apply it from their watch). Returns whether the fleet's drains changed (the
    /// store says whether the key existed: of several instances asked at once, one says so).
    pub(crate) async fn set_drain(
        &self,
        subject: &Subject,
        record: Option<Drain>,
    ) -> Result<bool, ClusterError> {
        if record.is_some() {
            self.inner.health.check_drainable(subject)?;
        }
        let key = format!("{}/drains/{}", self.inner.config.prefix, subject.key());
        let etcd = &self.inner.etcd;
        let result = match &record {
            Some(d) => {
                let lease = match d.expires {
                    Some(e) => {
                        let left = e
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        // Round up: the store may end it a little after, never before; each
                        // instance ends it on time by itself.
                        let ttl = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                        Some(etcd.grant(ttl.max(1)).await)
                    }
                    None => None,
                };
                match lease.transpose() {
                    Ok(lease) => {
                        // Serializing a struct of strings and times cannot fail.
                        let value = serde_json::to_vec(d).expect("drain serializes");
                        etcd.put(&key, &value, lease).await
                    }
                    Err(e) => Err(e),
                }
            }
            None => etcd.delete(&key).await.map(|n| n > 0),
        };
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
        let changed = match result {
            Ok(changed) => changed,
            Err(e) => {
                self.inner.set_disconnected(&e);
                return Err(ClusterError::Unavailable(e));
            }
        };
        self.inner.lock().drains.set(subject, record.clone());
        self.inner.health.set_drain(subject, record).await?;
        Ok(changed)
    }

    /// Returns the admin URLs of every instance whose lease is alive (for `meridian ctl`).
    pub(crate) async fn discover(config: &ClusterConfig) -> Result<Vec<(String, String)>, String> {
        let etcd = Etcd::new(config)?;
        let prefix = format!("{}/instances/", config.prefix);
        let (_, kvs) = etcd
            .range_prefix(&prefix)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for kv in kvs {
            let name = kv.key[prefix.len()..].to_string();
            if let Ok(r) = serde_json::from_slice::<InstanceRecord>(&kv.value)
                && let Some(admin) = r.admin
            {
                out.push((name, admin));
            }
        }
        Ok(out)
    }

    /// Returns the metrics of the fleet (connected, peers, writes, local and agreed state).
    pub(crate) fn collector(&self) -> Box<dyn Collector> {
        Box::new(FleetCollector {
            cluster: self.clone(),
        })
    }

    /// Keeps this instance in step with the store until `token` is cancelled, then revokes
    /// its lease (so the others stop counting its votes at once).
    pub(crate) async fn run(self, token: CancellationToken) {
        let inner = &self.inner;
        let mut transitions = inner.health.subscribe();
        let mut session = Session::default();
        let mut backoff = MIN_BACKOFF;
        info!(
            instance = %inner.config.instance,
            endpoints = ?inner.config.endpoints,
            prefix = %inner.config.prefix,
            "cluster: joining the fleet"
        );
        loop {
            if token.is_cancelled() {
                break;
            }
            match inner.connect(&mut session).await {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    inner.set_connected();
                    let end = inner.serve(&mut session, &mut transitions, &token).await;
                    if let Err(e) = end {
                        inner.set_disconnected(&e);
                    }
                }
                Err(e) => {
                    inner.set_disconnected(&e);
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            // Results that change while the store is away are published on return.
            while let Ok(e) = transitions.try_recv() {
                session.dirty.insert(TargetKey {
                    address: e.address,
                    check: e.check.into(),
                });
            }
        }
        if let Some(lease) = session.lease
            && inner.is_connected_now()
        {
            match tokio::time::timeout(Duration::from_secs(2), inner.etcd.revoke(lease)).await {
                Ok(Ok(())) => info!("cluster: lease revoked, left the fleet"),
                Ok(Err(e)) => warn!(error = %e, "cluster: cannot revoke the lease"),
                Err(_) => warn!("cluster: revoking the lease timed out"),
            }
        }
    }
}

/// What one instance keeps between connections.
#[derive(Debug, Default)]
struct Session {
    /// The last revision applied (0: read everything).
    revision: i64,
    /// This instance's lease.
    lease: Option<i64>,
    /// Own results not yet published.
    dirty: HashSet<TargetKey>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Fleet> {
        // Every update is a plain assignment: a poisoned lock still holds consistent data.
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_connected_now(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self) {
        if !self.connected.swap(true, Ordering::Relaxed) {
            info!(instance = %self.config.instance, "cluster: connected to the store");
        }
        self.lock().error = None;
    }

    fn set_disconnected(&self, e: &EtcdError) {
        if self.connected.swap(false, Ordering::Relaxed) {
            warn!(error = %e, "cluster: lost the store; answering from the last known state and own probes");
        } else {
            debug!(error = %e, "cluster: store still unreachable");
        }
        self.lock().error = Some(e.to_string());
    }

    fn prefix(&self) -> &str {
        &self.config.prefix
    }

    fn parse_key(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(self.prefix())?.strip_prefix('/')?;
        if let Some(name) = rest.strip_prefix("instances/") {
            return Some(Key::Instance(name.to_string()));
        }
        if let Some(rest) = rest.strip_prefix("health/") {
            let (name, rest) = rest.split_once('/')?;
            let (check, address) = rest.rsplit_once('/')?;
            let address: IpAddr = address.parse().ok()?;
            return Some(Key::Vote(
                name.to_string(),
                TargetKey {
                    address,
                    check: check.into(),
                },
            ));
        }
        if let Some(rest) = rest.strip_prefix("drains/") {
            return Subject::from_key(rest).map(Key::Drain);
        }
        None
    }

    /// (Re)joins: reads everything when needed, makes sure of the lease, publishes presence
    /// and the own results not yet published.
    async fn connect(&self, session: &mut Session) -> Result<(), EtcdError> {
        if session.revision == 0 {
            let (revision, kvs) = self
                .etcd
                .range_prefix(&format!("{}/", self.prefix()))
                .await?;
            self.load_all(revision, kvs).await;
            session.revision = revision;
        }
        // The store answers: the rest of joining is publishing.
        self.set_connected();
        let alive = match session.lease {
            Some(id) => self.etcd.keepalive(id).await?,
            None => false,
        };
        if !alive {
            if session.lease.is_some() {
                warn!("cluster: this instance's lease expired; joining again with a new one");
            }
            session.lease = Some(self.etcd.grant(self.config.lease_ttl.as_secs()).await?);
            // A new lease carries none of the old keys: publish every result again.
            session.dirty = self
                .health
                .local_states()
                .into_iter()
                .map(|(k, _, _)| k)
                .collect();
        }
        self.put_presence(session.lease).await?;
        self.flush(session).await
    }

    async fn put_presence(&self, lease: Option<i64>) -> Result<(), EtcdError> {
        let record = InstanceRecord {
            admin: self.lock().admin.clone(),
            started: crate::health::format_rfc3339(self.started),
            heartbeat: crate::health::format_rfc3339(SystemTime::now()),
        };
        let key = format!("{}/instances/{}", self.prefix(), self.config.instance);
        // Serializing a struct of strings cannot fail.
        let value = serde_json::to_vec(&record).expect("record serializes");
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.etcd.put(&key, &value, lease).await.map(|_| ())
    }

    /// Publishes this instance's own results that changed since they were last published.
    async fn flush(&self, session: &mut Session) -> Result<(), EtcdError> {
        if session.dirty.is_empty() {
            return Ok(());
        }
        let states: HashMap<TargetKey, (State, Option<SystemTime>)> = self
            .health
            .local_states()
            .into_iter()
            .map(|(k, s, since)| (k, (s, since)))
            .collect();
        let keys: Vec<TargetKey> = session.dirty.iter().cloned().collect();
        let mut ops = Vec::with_capacity(keys.len());
        for k in &keys {
            let key = format!(
                "{}/health/{}/{}/{}",
                self.prefix(),
                self.config.instance,
                k.check,
                k.address
            );
            match states.get(k) {
                // Not probed yet: no vote.
                Some((State::Unknown, _)) => {}
                Some((state, since)) => {
                    let record = VoteRecord {
                        state: state.as_str().to_string(),
                        since: since.map(crate::health::format_rfc3339),
                    };
                    // Serializing two strings cannot fail.
                    let value = serde_json::to_vec(&record).expect("vote serializes");
                    ops.push((key, Some(value)));
                }
                // No longer probed here (a reload removed it): withdraw the vote.
                None => ops.push((key, None)),
            }
        }
        self.writes.fetch_add(ops.len() as u64, Ordering::Relaxed);
        self.etcd.put_many(&ops, session.lease).await?;
        for k in keys {
            session.dirty.remove(&k);
        }
        Ok(())
    }

    /// Replaces what this instance knows with a full read of the store.
    async fn load_all(&self, revision: i64, kvs: Vec<etcd::KeyValue>) {
        {
            let mut fleet = self.lock();
            fleet.revision = revision;
            fleet.instances.clear();
            fleet.votes.clear();
            fleet.drains = Overrides::empty();
        }
        let events = kvs.into_iter().map(Event::Put).collect();
        self.apply(revision, events, true).await;
        info!(revision, "cluster: read the fleet's state");
    }

    /// Applies watched (or read) changes, then hands votes and drains to the health side.
    async fn apply(&self, revision: i64, events: Vec<Event>, full: bool) {
        let me = self.config.instance.as_str();
        let now = SystemTime::now();
        let (votes_changed, drains_changed) = {
            let mut fleet = self.lock();
            let (mut votes_changed, mut drains_changed) = (full, full);
            for event in events {
                let (key, value) = match &event {
                    Event::Put(kv) => (kv.key.as_str(), Some(kv.value.as_slice())),
                    Event::Delete(k) => (k.as_str(), None),
                };
                let Some(parsed) = self.parse_key(key) else {
                    debug!(key, "cluster: ignoring an unknown key");
                    continue;
                };
                match (parsed, value) {
                    (Key::Instance(name), Some(v)) => {
                        match serde_json::from_slice::<InstanceRecord>(v) {
                            Ok(r) => {
                                if !fleet.instances.contains_key(&name) && name != me {
                                    info!(instance = %name, "cluster: instance joined");
                                    votes_changed = true;
                                }
                                fleet.last_seen.insert(name.clone(), now);
                                fleet.instances.insert(name, r);
                            }
                            Err(e) => warn!(key, error = %e, "cluster: bad instance record"),
                        }
                    }
                    (Key::Instance(name), None) => {
                        if fleet.instances.remove(&name).is_some() && name != me {
                            info!(instance = %name, "cluster: instance left (its lease is gone); its votes no longer count");
                        }
                        fleet.votes.remove(&name);
                        votes_changed = true;
                    }
                    (Key::Vote(name, _), _) if name == me => {}
                    (Key::Vote(name, target), Some(v)) => {
                        let state = match serde_json::from_slice::<VoteRecord>(v) {
                            Ok(r) if r.state == "up" => State::Up,
                            Ok(r) if r.state == "down" => State::Down,
                            _ => State::Unknown,
                        };
                        fleet.last_seen.insert(name.clone(), now);
                        fleet.votes.entry(name).or_default().insert(target, state);
                        votes_changed = true;
                    }
                    (Key::Vote(name, target), None) => {
                        if let Some(v) = fleet.votes.get_mut(&name) {
                            v.remove(&target);
                        }
                        votes_changed = true;
                    }
                    (Key::Drain(subject), Some(v)) => match serde_json::from_slice::<Drain>(v) {
                        Ok(d) => {
                            fleet.drains.set(&subject, Some(d));
                            drains_changed = true;
                        }
                        Err(e) => warn!(key, error = %e, "cluster: bad drain record"),
                    },
                    (Key::Drain(subject), None) => {
                        fleet.drains.set(&subject, None);
                        drains_changed = true;
                    }
                }
            }
            if revision > fleet.revision {
                fleet.revision = revision;
            }
            (votes_changed, drains_changed)
        };
        if votes_changed {
            self.health.set_peer_votes(self.peer_votes());
        }
        if drains_changed {
            let mut drains = self.lock().drains.clone();
            drains.expire(now);
            if let Err(e) = self.health.replace_drains(drains).await {
                warn!(error = %e, "cluster: cannot apply the fleet's drains");
            }
        }
    }

    /// Returns the votes of the fresh peers (their presence key exists).
    fn peer_votes(&self) -> PeerVotes {
        let fleet = self.lock();
        let peers = fleet
            .votes
            .iter()
            .filter(|(name, _)| fleet.instances.contains_key(*name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        PeerVotes {
            quorum: Some(self.config.quorum),
            me: self.config.instance.clone(),
            peers,
        }
    }

    /// Watches, renews the lease and publishes own results until the store fails or `token`
    /// is cancelled.
    async fn serve(
        &self,
        session: &mut Session,
        transitions: &mut tokio::sync::mpsc::UnboundedReceiver<crate::health::TransitionEvent>,
        token: &CancellationToken,
    ) -> Result<(), EtcdError> {
        let mut watch = self
            .etcd
            .watch(&format!("{}/", self.prefix()), session.revision + 1)
            .await?;
        let ttl = self.config.lease_ttl;
        let mut renew = tokio::time::interval(ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let mut heartbeat = tokio::time::interval(ttl);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                batch = watch.next() => match batch {
                    Ok(b) => {
                        if !b.events.is_empty() {
                            self.apply(b.revision, b.events, false).await;
                        }
                        if b.revision > session.revision {
                            session.revision = b.revision;
                        }
                    }
                    Err(EtcdError::Compacted(rev)) => {
                        warn!(compacted = rev, "cluster: missed history was compacted; reading everything again");
                        session.revision = 0;
                        return Err(EtcdError::Compacted(rev));
                    }
                    Err(e) => return Err(e),
                },
                e = transitions.recv() => {
                    let Some(e) = e else { return Ok(()) };
                    session.dirty.insert(TargetKey { address: e.address, check: e.check.into() });
                    // Take every transition already queued, then publish them in one go.
                    while let Ok(e) = transitions.try_recv() {
                        session.dirty.insert(TargetKey { address: e.address, check: e.check.into() });
                    }
                    self.flush(session).await?;
                }
                _ = renew.tick() => {
                    let Some(lease) = session.lease else { return Ok(()) };
                    if !self.etcd.keepalive(lease).await? {
                        session.lease = None;
                        return Err(EtcdError::Refused("this instance's lease expired".into()));
                    }
                }
                _ = heartbeat.tick() => self.put_presence(session.lease).await?,
            }
        }
    }
}

/// Encodes the fleet's metrics at scrape time.
#[derive(Debug)]
struct FleetCollector {
    cluster: Cluster,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = &self.cluster;
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name, help, v: i64| {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(m)
        };
        gauge(
            &mut encoder,
            CLUSTER_CONNECTED,
            "1 while the cluster store (etcd) answers, else 0 (answers then come from the last known state and own probes).",
            i64::from(c.is_connected()),
        )?;
        gauge(
            &mut encoder,
            CLUSTER_PEERS,
            "Other instances of the fleet whose lease in the store is alive.",
            c.peers() as i64,
        )?;
        let m = encoder.encode_descriptor(
            CLUSTER_STORE_WRITES,
            "Writes (puts and deletes) this instance sent to the cluster store.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(c.inner.writes.load(Ordering::Relaxed)).encode(m)?;
        let targets = c.inner.health.status();
        if targets.is_empty() {
            return Ok(());
        }
        for (name, help, agreed) in [
            (
                TARGET_LOCAL_UP,
                "1 when this instance's own probes see the target up or not yet probed, by check and address.",
                false,
            ),
            (
                TARGET_AGREED_UP,
                "1 when the fleet's agreed state of the target is not down, by check and address.",
                true,
            ),
        ] {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for t in &targets {
                let state = match (&t.fleet, agreed) {
                    (Some(f), true) => f.agreed,
                    _ => t.state,
                };
                let address = t.address.to_string();
                let labels = [("check", t.check.as_str()), ("address", address.as_str())];
                ConstGauge::new(i64::from(state != State::Down))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[[zone]]` table for test configs (validation wants one).
    fn zone() -> String {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/example.net.zone");
        format!(
            "[[zone]]\norigin = \"example.net.\"\nfile = {:?}\n",
            file.display().to_string()
        )
    }

    fn cluster() -> Cluster {
        let dir = std::env::temp_dir();
        let text = zone()
            + "[server]\ndns_listen = [\"127.0.0.1:0\"]\n[cluster]\nstore = \"etcd\"\nendpoints = [\"http://127.0.0.1:1\"]\nprefix = \"/meridian/t\"\ninstance = \"a\"\n";
        let config = crate::config::parse_str(&dir.join("m.toml"), &text).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let health = Health::new(&config, CancellationToken::new()).unwrap();
        Cluster::new(config.cluster.as_ref().unwrap(), health).unwrap()
    }

    #[test]
    fn keys_under_the_prefix_parse_into_what_they_stand_for() {
        let c = cluster();
        let i = &c.inner;
        assert_eq!(
            i.parse_key("/meridian/t/instances/ns1"),
            Some(Key::Instance("ns1".into()))
        );
        assert_eq!(
            i.parse_key("/meridian/t/health/ns1/web/192.0.2.1"),
            Some(Key::Vote(
                "ns1".into(),
                TargetKey {
                    address: "192.0.2.1".parse().unwrap(),
                    check: "web".into()
                }
            ))
        );
        assert_eq!(
            i.parse_key("/meridian/t/health/ns1/a/b/2001:db8::1"),
            Some(Key::Vote(
                "ns1".into(),
                TargetKey {
                    address: "2001:db8::1".parse().unwrap(),
                    check: "a/b".into()
                }
            ))
        );
        assert_eq!(
            i.parse_key("/meridian/t/drains/regions/eu-west"),
            Some(Key::Drain(Subject::Region("eu-west".into())))
        );
        assert_eq!(i.parse_key("/meridian/tx/instances/ns1"), None);
        assert_eq!(i.parse_key("/meridian/t/drains/planets/mars"), None);
    }

    #[tokio::test]
    async fn a_drain_while_the_store_is_unreachable_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = zone()
            + "[server]\ndns_listen = [\"127.0.0.1:0\"]\nstate_file = \"state.json\"\n[region.eu]\nlatitude = 1\nlongitude = 1\n[cluster]\nstore = \"etcd\"\nendpoints = [\"http://127.0.0.1:1\"]\nprefix = \"/meridian/t\"\ninstance = \"a\"\n";
        let config = crate::config::parse_str(&dir.path().join("m.toml"), &text).unwrap();
        let health = Health::new(&config, CancellationToken::new()).unwrap();
        health.begin(&config);
        let c = Cluster::new(config.cluster.as_ref().unwrap(), health.clone()).unwrap();
        let err = c
            .set_drain(&Subject::Region("eu".into()), Some(Drain::now("t")))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert!(health.drained_regions().is_empty());
        assert!(!dir.path().join("state.json").exists());
        assert!(!c.is_connected());
    }
}
