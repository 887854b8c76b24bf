//! GeoIP: where a client is.
//!
//! Owns the MaxMind-format database reader (memory-mapped), the `[nets]` CIDR overrides, the
//! great-circle distance and the builder of the sample database ([`build_database`]). Does not
//! own policy (which region a location prefers) or ECS parsing (`dns`). Does no I/O after
//! [`Geo::open`] and never reads the clock.
//!
//! Key types: [`Geo`] (database + overrides), [`Located`] (the answer for one address, with the
//! ECS scope it is valid for), [`Location`] and [`Code`] (two-letter country/continent codes
//! stored inline, so [`Geo::locate`] allocates nothing), [`Via`] (which rule turned the queried
//! address into the located one: itself, or the IPv4 address an IPv4-mapped, IPv4-compatible,
//! NAT64, 6to4 or Teredo address embeds) and [`ScopeMap`] (the widest ECS scope on which a
//! caller's decision stays the same, built by [`Geo::scope_maps`] over the whole address space).
//!
//! Databases: MaxMind GeoIP2/GeoLite2 City or Country, DB-IP lite (same schema), and the flat
//! schema of some redistributions (top-level `latitude`, `longitude`, `country_code`). A Country
//! database has no coordinates: its [`Location`]s carry codes with `latitude`/`longitude` `None`.

mod build;
mod prefix;
mod record;
mod scope;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use ipnet::Ipv6Net;
use maxminddb::{Mmap, Reader};

use crate::config::NetOverride;

pub use build::{BuildReport, build_database};
pub(crate) use prefix::Rule;
use prefix::{Bits, Embedding, Net, Overrides};
use record::Record;
pub(crate) use scope::{ScopeMap, ScopeStats};

/// Errors opening or building a GeoIP database.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The database could not be opened or read.
    #[error("cannot open GeoIP database {path}: {message}")]
    Open {
        /// The database path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A line of the CSV given to [`build_database`] is wrong (or the file cannot be read:
    /// then `line` is 0).
    #[error("{path}:{line}: {message}")]
    Csv {
        /// The CSV path.
        path: String,
        /// The 1-based line number; 0 when the whole file is at fault.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Walking the database for the scope maps failed (a corrupt tree).
    #[error("cannot walk GeoIP database: {message}")]
    Walk {
        /// What went wrong.
        message: String,
    },
    /// The database could not be encoded or written.
    #[error("cannot write GeoIP database {path}: {message}")]
    Write {
        /// The output path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A two-letter code (ISO 3166 country or continent code), uppercase ASCII, stored inline.
///
/// Dereferences to `str`, so `location.country.as_deref() == Some("DE")` works as it would for
/// a `String`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code([u8; 2]);

impl Code {
    /// Returns the code for `s` (two ASCII letters, any case), or `None` for anything else.
    pub fn new(s: &str) -> Option<Code> {
        match s.as_bytes() {
            &[a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Code([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// Returns the code as a string slice.
    pub(crate) fn as_str(&self) -> &str {
        // The bytes are ASCII letters by construction, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl Deref for Code {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A point on Earth and the codes that `geo` maps use.
///
/// `latitude` and `longitude` are both `Some` or both `None` (a Country database, or a record
/// without coordinates); use [`Location::coordinates`] to get them as a pair.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Location {
    /// Degrees north, -90..=90, when known.
    pub latitude: Option<f64>,
    /// Degrees east, -180..=180, when known.
    pub longitude: Option<f64>,
    /// ISO 3166 country code, uppercase, when known.
    pub country: Option<Code>,
    /// Continent code (AF AN AS EU NA OC SA), when known.
    pub continent: Option<Code>,
}

impl Location {
    /// Returns `(latitude, longitude)` in degrees when the location has coordinates.
    pub(crate) fn coordinates(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }

    /// Builds a location from a decoded record; `None` when it holds nothing usable.
    fn from_record(r: Record) -> Option<Location> {
        let coordinates = match (r.latitude, r.longitude) {
            (Some(lat), Some(lon))
                if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) =>
            {
                Some((lat, lon))
            }
            _ => None,
        };
        let country = r.country.or(r.registered_country);
        let continent = r.continent;
        if coordinates.is_none() && country.is_none() && continent.is_none() {
            return None;
        }
        Some(Location {
            latitude: coordinates.map(|c| c.0),
            longitude: coordinates.map(|c| c.1),
            country,
            continent,
        })
    }
}

/// Where a location came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationSource {
    /// A `[nets]` override matched.
    Nets,
    /// The GeoIP database had a record.
    Database,
    /// Nothing matched: private, reserved or unknown address.
    None,
}

/// Which IPv6 transition prefixes are located by the IPv4 address they embed
/// (`server.ipv6_transition`, `server.nat64_prefixes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    /// NAT64 (`64:ff9b::/96` and `nat64_prefixes`), 6to4 (`2002::/16`) and Teredo
    /// (`2001::/32`) on. IPv4-mapped and IPv4-compatible addresses are always located by their
    /// IPv4 address.
    pub(crate) enabled: bool,
    /// NAT64 prefixes besides the well-known one (RFC 6052: 32, 40, 48, 56, 64 or 96 bits).
    pub(crate) nat64_prefixes: Vec<Ipv6Net>,
}

impl Default for Transition {
    fn default() -> Self {
        Transition {
            enabled: true,
            nat64_prefixes: Vec::new(),
        }
    }
}

/// How the queried address became the located one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    /// The address as queried (ECS address or resolver address).
    pub(crate) queried: IpAddr,
    /// The rule that found the located address in it.
    pub(crate) rule: Rule,
    /// Prefix length of the embedding network (`2002::/16`: 16); 0 for [`Rule::Direct`].
    pub(crate) prefix_len: u8,
    /// The shortest scope an answer for `queried` may have, in bits of its family: the
    /// embedding network, narrowed by `[nets]` entries inside it; 0 for [`Rule::Direct`].
    pub(crate) min_scope: u8,
}

impl Via {
    /// Returns the rule for an address located as itself.
    pub fn direct(queried: IpAddr) -> Via {
        Via {
            queried,
            rule: Rule::Direct,
            prefix_len: 0,
            min_scope: 0,
        }
    }

    /// Converts a scope in bits of the located address's family into bits of the queried
    /// address's family: an IPv4 scope /s of a 6to4 address is /(16 + s), of an IPv4-mapped or
    /// NAT64 /96 one /(96 + s).
    pub(crate) fn scope(&self, inner: u8) -> u8 {
        match self.rule {
            Rule::Direct => inner,
            rule => rule.outer_scope(self.prefix_len, inner).max(self.min_scope),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.rule {
            Rule::Direct => return f.write_str("the address itself"),
            Rule::Ipv4Mapped => "IPv4-mapped",
            Rule::Ipv4Compatible => "IPv4-compatible",
            Rule::Nat64(_) => "NAT64",
            Rule::SixToFour => "6to4",
            Rule::Teredo => "Teredo (inverted)",
        };
        let net = prefix::mask(Bits::of(self.queried).bits, self.prefix_len);
        write!(
            f,
            "{what} {}/{}",
            std::net::Ipv6Addr::from(net),
            self.prefix_len
        )
    }
}

/// The result of locating one address.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The address located: the queried address, or the IPv4 address it embeds (see `via`).
    pub ip: IpAddr,
    /// The location, when the database has one (and no override matched).
    pub location: Option<Location>,
    /// The region of a matching `[nets]` override (shared, so cloning it does not allocate).
    pub region: Option<Arc<str>>,
    /// Which source decided.
    pub source: LocationSource,
    /// Prefix length of the largest network around `ip` on which this result is the same
    /// (the matched database or `[nets]` network, narrowed by any more specific override inside
    /// it). In bits of `ip`'s family (IPv4 0..=32, IPv6 0..=128): [`Via::scope`] converts it
    /// for the queried address.
    pub prefix_len: u8,
    /// How the queried address became `ip`.
    pub via: Via,
}

/// Facts about an open database, for `meridian check` and the status page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DatabaseInfo {
    /// `database_type` from the metadata (`GeoLite2-City`, `DBIP-City-Lite`, …).
    pub(crate) database_type: String,
    /// Build time, seconds since the Unix epoch.
    pub(crate) build_epoch: u64,
    /// 4 or 6.
    pub(crate) ip_version: u16,
    /// Nodes in the search tree.
    pub(crate) node_count: u32,
}

/// A GeoIP database plus CIDR overrides. Cloning shares the open database.
#[derive(Debug, Clone)]
pub(crate) struct Geo {
    inner: Arc<Inner>,
}

/// What a [`Geo`] shares between its clones.
#[derive(Debug)]
struct Inner {
    reader: Option<Reader<Mmap>>,
    nets: Overrides,
    non_public: Vec<Net>,
    /// IPv6 networks located by the IPv4 address they embed, longest first.
    embeddings: Vec<Embedding>,
}

impl Geo {
    /// Opens the database at `path` (if any, memory-mapped) and compiles the overrides and the
    /// IPv6 transition prefixes.
    ///
    /// The file must not be modified in place while it is open: replace it by renaming a new
    /// file over it (as `geoipupdate` and [`build_database`] do) and reload.
    pub(crate) fn open(
        path: Option<&Path>,
        nets: &[NetOverride],
        transition: &Transition,
    ) -> Result<Geo, GeoError> {
        let reader = match path {
            None => None,
            Some(path) => {
                let err = |message: String| GeoError::Open {
                    path: path.display().to_string(),
                    message,
                };
                // SAFETY: the map is read-only and the documented contract (above, and in
                // geodata/README.md) is that the file is replaced by rename, never modified
                // in place, while Meridian runs. A rename leaves this mapping intact.
                let reader = unsafe { Reader::open_mmap(path) }.map_err(|e| err(e.to_string()))?;
                // Fail at open, not per query, when the tree cannot be walked at all.
                reader
                    .lookup(IpAddr::from([8, 8, 8, 8]))
                    .map_err(|e| err(e.to_string()))?;
                Some(reader)
            }
        };
        Ok(Geo {
            inner: Arc::new(Inner {
                reader,
                nets: Overrides::new(nets),
                non_public: prefix::non_public(),
                embeddings: prefix::embeddings(transition.enabled, &transition.nat64_prefixes),
            }),
        })
    }

    /// Returns facts about the open database, or `None` when there is none.
    pub(crate) fn database_info(&self) -> Option<DatabaseInfo> {
        let m = self.inner.reader.as_ref()?.metadata();
        Some(DatabaseInfo {
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
            ip_version: m.ip_version,
            node_count: m.node_count,
        })
    }

    /// Locates `queried`. An IPv4-mapped address is located by its IPv4 address; otherwise a
    /// `[nets]` override (longest prefix) wins; then an IPv4-compatible, NAT64, 6to4 or Teredo
    /// address is located by the IPv4 address it embeds (the last three only with
    /// [`Transition::enabled`]); then non-public addresses (private, loopback, link-local, CGN,
    /// multicast, reserved) have no location; then the database decides. Never fails: a
    /// database error gives no location.
    pub(crate) fn locate(&self, queried: IpAddr) -> Located {
        let g = &*self.inner;
        if let Some((v4, via)) = g.embedded(queried) {
            let mut located = g.locate_direct(IpAddr::V4(v4));
            located.via = via;
            return located;
        }
        g.locate_direct(queried)
    }

    /// Returns the class `map` gives `queried` and its widest scope (in bits of `queried`'s
    /// family) without looking at the database: what `map.class` and `map.scope` give for
    /// `locate(queried)`. `None` where the map cannot tell (then locate).
    pub(crate) fn class_of(&self, map: &ScopeMap, queried: IpAddr) -> Option<(u32, u8)> {
        if let Some(hit) = map.lookup(queried) {
            return Some(hit);
        }
        let (v4, via) = self.inner.embedded(queried)?;
        let (class, inner) = map.lookup(IpAddr::V4(v4))?;
        Some((class, via.scope(inner)))
    }

    /// Returns the scope maps of `n` decision functions; see [`ScopeMap`].
    ///
    /// `classify(located, out)` writes into `out[..n]` the class of a location under each
    /// function (equal classes: equal decisions); classes must be below `u32::MAX`. It is
    /// called once per distinct database record, `[nets]` entry and for "no location".
    /// `cancelled` is polled now and then: when it returns true the walk stops and `Ok(None)`
    /// is returned. Pure CPU work over the memory-mapped file: meant for a background thread.
    pub(crate) fn scope_maps(
        &self,
        n: usize,
        classify: &mut dyn FnMut(&Located, &mut [u32]),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<(Vec<ScopeMap>, ScopeStats)>, GeoError> {
        scope::build(&self.inner, n, classify, cancelled)
    }
}

impl Inner {
    /// Returns the IPv4 address `queried` embeds and how, when an embedding rule locates it
    /// (see [`Geo::locate`]).
    fn embedded(&self, queried: IpAddr) -> Option<(Ipv4Addr, Via)> {
        if !queried.is_ipv6() {
            return None;
        }
        let bits = Bits::of(queried);
        let e = self.embeddings.iter().find(|e| e.net.contains(bits))?;
        if e.rule != Rule::Ipv4Mapped && self.nets.longest_match(bits).is_some() {
            return None;
        }
        // `[nets]` entries and other embedding networks inside this one answer differently
        // (IPv4-mapped addresses never reach `[nets]` as IPv6).
        let mut min_scope = e.net.len;
        if e.rule != Rule::Ipv4Mapped {
            min_scope = self.nets.narrow(min_scope, bits, None);
            for o in self.embeddings.iter().filter(|o| o.net != e.net) {
                min_scope = prefix::narrow(min_scope, bits, &o.net);
            }
        }
        let via = Via {
            queried,
            rule: e.rule,
            prefix_len: e.net.len,
            min_scope,
        };
        Some((Ipv4Addr::from(e.rule.extract(bits.bits)), via))
    }

    /// Locates `ip` as itself (an IPv6 `ip` is not in an embedding network, or a `[nets]`
    /// entry holds it).
    fn locate_direct(&self, ip: IpAddr) -> Located {
        let bits = Bits::of(ip);
        let via = Via::direct(ip);

        if let Some(o) = self.nets.longest_match(bits) {
            // More specific overrides to the same region do not change the answer.
            let mut scope = self.nets.narrow(o.net.len, bits, Some(&o.region));
            // IPv4-mapped addresses inside an IPv6 override are located as IPv4.
            scope = self.narrow_embeddings(scope, bits, true);
            return Located {
                ip,
                location: None,
                region: Some(o.region.clone()),
                source: LocationSource::Nets,
                prefix_len: scope,
                via,
            };
        }

        let none = |scope: u8| Located {
            ip,
            location: None,
            region: None,
            source: LocationSource::None,
            prefix_len: self.narrow_embeddings(scope, bits, false),
            via,
        };

        if let Some(block) = self.non_public.iter().find(|n| n.contains(bits)) {
            return none(self.nets.narrow(block.len, bits, None));
        }

        let Some(reader) = &self.reader else {
            // Without a database every address outside the overrides has no location.
            return none(self.nets.narrow(0, bits, None));
        };

        let (db_len, location) = match reader.lookup(ip) {
            Ok(found) => {
                let len = match found.network() {
                    Ok(net) => normalise_prefix(ip, net.ip(), net.prefix()),
                    // Cannot happen for a lookup result; be exact rather than wrong.
                    Err(_) => bits.width(),
                };
                let location = found
                    .decode::<Record>()
                    .ok()
                    .flatten()
                    .and_then(Location::from_record);
                (len, location)
            }
            // An IPv6 address in an IPv4-only database: the whole IPv6 space is unknown.
            Err(_) if ip.is_ipv6() && reader.metadata().ip_version == 4 => (0, None),
            // A corrupt tree: answer for this address only.
            Err(_) => (bits.width(), None),
        };

        match location {
            Some(location) => {
                // Overrides and non-public blocks inside the database network answer
                // differently: the scope must exclude them.
                let mut scope = self.nets.narrow(db_len, bits, None);
                for block in &self.non_public {
                    scope = prefix::narrow(scope, bits, block);
                }
                Located {
                    ip,
                    location: Some(location),
                    region: None,
                    source: LocationSource::Database,
                    prefix_len: self.narrow_embeddings(scope, bits, false),
                    via,
                }
            }
            // Non-public blocks inside an unknown network answer the same (no location).
            None => none(self.nets.narrow(db_len, bits, None)),
        }
    }

    /// Narrows `scope` around a directly located IPv6 address so that it excludes the
    /// embedding networks (or only the IPv4-mapped one), which are located differently.
    fn narrow_embeddings(&self, mut scope: u8, bits: Bits, mapped_only: bool) -> u8 {
        if bits.v6 {
            for e in &self.embeddings {
                if !mapped_only || e.rule == Rule::Ipv4Mapped {
                    scope = prefix::narrow(scope, bits, &e.net);
                }
            }
        }
        scope
    }
}

/// Converts the network a lookup reports into a prefix length in bits of `ip`'s family.
///
/// maxminddb reports an IPv4 network for IPv4 lookups in an IPv6 database that has an IPv4
/// subtree, but an IPv6 network (`::/n`, n <= 96) when the match lies above that subtree: then
/// every IPv4 address shares the result and the IPv4 scope is 0.
fn normalise_prefix(ip: IpAddr, net_ip: IpAddr, len: u8) -> u8 {
    match (ip, net_ip) {
        (IpAddr::V4(_), IpAddr::V6(_)) => len.saturating_sub(96).min(32),
        (IpAddr::V4(_), IpAddr::V4(_)) => len.min(32),
        (IpAddr::V6(_), _) => len.min(128),
    }
}

#[cfg(test)]
/// Returns the great-circle distance in km between two points given in degrees (haversine on a
/// sphere of radius 6371 km; error under 0.5% against the ellipsoid, plenty to rank regions).
pub(crate) fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    // Clamp: rounding can push `a` a hair outside 0..=1 for antipodal or identical points.
    2.0 * EARTH_RADIUS_KM * a.clamp(0.0, 1.0).sqrt().asin()
}

#[cfg(test)]
mod tests;
