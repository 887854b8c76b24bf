//! Meridian: a global traffic manager. An authoritative DNS server that answers queries for API
//! hostnames with the nearest *healthy* regional endpoint.
//!
//! Module map (see `ARCHITECTURE.md`):
//!
//! - [`config`]: raw serde structs -> validated, typed [`config::Config`]; every error at once.
//! - [`zone`]: static records from RFC 1035 zone files, and lookups in them.
//! - [`geo`]: GeoIP (MaxMind format, memory-mapped), CIDR overrides, great-circle distance.
//! - [`health`]: probes, the rise/fall state machine, operator overrides; publishes a
//!   [`health::HealthView`].
//! - [`policy`]: pure decisions: (service, client location, health view) -> addresses.
//! - [`dns`]: the only place that speaks DNS: request bytes -> response bytes; UDP/TCP transports.
//! - [`dnssec`]: online signing (keys, RRSIG/NSEC/DNSKEY bytes, signature cache); used by `dns`;
//!   below `zone` and `snapshot` (its algorithm names and defaults live in `config`).
//! - [`names`]: a domain name's wire form, shared by `dnssec`, `snapshot` and `dns`.
//! - [`admin`]: the admin HTTP port.
//! - [`metrics`]: metric names and the registry.
//! - [`notify`]: webhook POSTs on target state changes (bounded queue, retries).
//! - [`query_log`]: `[query_log]`, one JSON line per sampled answer, written by its own thread.
//! - [`outage`]: services with no usable target (failing open), WARN logs when that begins
//!   and ends.
//! - [`snapshot`]: the immutable [`snapshot::Snapshot`] (config, zones, GeoIP, services keyed by
//!   wire name), its load/check, reload and `explain`; below `dns`, `admin` and `notify`.
//! - `watch`: reloads by itself when the config, a zone file or the GeoIP database changes.
//! - `sd_notify`: tells systemd (`Type=notify`) when the server is ready and when it stops.
//! - [`app`]: binds, spawns, handles signals and shuts down in order.
//! - [`rlimit`]: the open-file limit the config needs, raised at start.
//! - [`cluster`]: a fleet sharing drains and health votes through etcd (`[cluster]`).
//! - [`ctl`]: `meridian ctl`, the operator's command against one instance or the fleet.
//!
//! `geo`, `policy` and the health state machine do no I/O and never read the clock. No two
//! modules import each other, directly or through others.

// Items are `pub(crate)` unless `main.rs`, the benches or the integration tests need them, so
// public docs link to private items; CI builds the docs with `--document-private-items`, where
// those links resolve.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod cluster;
pub mod config;
pub mod ctl;
pub(crate) mod dns;
pub mod dnssec;
pub mod geo;
pub mod health;
pub mod metrics;
pub(crate) mod names;
pub(crate) mod notify;
pub(crate) mod outage;
pub mod policy;
pub(crate) mod query_log;
pub mod rlimit;
mod sd_notify;
pub mod snapshot;
mod watch;
pub(crate) mod zone;
