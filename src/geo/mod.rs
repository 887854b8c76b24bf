//! GeoIP: where a client is.
//!
//! Owns the MaxMind-format database reader (memory-mapped), the `[nets]` CIDR overrides, the
//! great-circle distance and the builder of the sample database ([`build_database`]). Does not
//! own policy (which region a location prefers) or ECS parsing (`dns`). Does no I/O after
//! [`Geo::open`] and never reads the clock.
//!
//! Key types: [`Geo`] (database + overrides), [`Located`] (the answer for one address, with the
//! ECS scope it is valid for), [`Location`] and [`Code`] (two-letter country/continent codes
//! stored inline, so [`Geo::locate`] allocates nothing).
//!
//! Databases: MaxMind GeoIP2/GeoLite2 City or Country, DB-IP lite (same schema), and the flat
//! schema of some redistributions (top-level `latitude`, `longitude`, `country_code`). A Country
//! database has no coordinates: its [`Location`]s carry codes with `latitude`/`longitude` `None`.

mod build;
mod prefix;
mod record;

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use maxminddb::{Mmap, Reader};

use crate::config::NetOverride;

pub use build::{BUILD_EPOCH, BuildReport, CSV_HEADER, DATABASE_TYPE, build_database};
use prefix::{Bits, Net, Overrides};
use record::Record;

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
    pub fn as_str(&self) -> &str {
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
    pub fn coordinates(&self) -> Option<(f64, f64)> {
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

/// The result of locating one address.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// The address looked up (canonical: IPv4-mapped IPv6 becomes IPv4).
    pub ip: IpAddr,
    /// The location, when the database has one (and no override matched).
    pub location: Option<Location>,
    /// The region of a matching `[nets]` override (shared, so cloning it does not allocate).
    pub region: Option<Arc<str>>,
    /// Which source decided.
    pub source: LocationSource,
    /// Prefix length of the largest network around `ip` on which this result is the same
    /// (the matched database or `[nets]` network, narrowed by any more specific override inside
    /// it). In bits of `ip`'s family (IPv4 0..=32, IPv6 0..=128).
    pub prefix_len: u8,
}

/// Facts about an open database, for `meridian check` and the status page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatabaseInfo {
    /// `database_type` from the metadata (`GeoLite2-City`, `DBIP-City-Lite`, …).
    pub database_type: String,
    /// Build time, seconds since the Unix epoch.
    pub build_epoch: u64,
    /// 4 or 6.
    pub ip_version: u16,
    /// Nodes in the search tree.
    pub node_count: u32,
}

/// A GeoIP database plus CIDR overrides.
#[derive(Debug)]
pub struct Geo {
    reader: Option<Reader<Mmap>>,
    nets: Overrides,
    non_public: Vec<Net>,
}

impl Geo {
    /// Opens the database at `path` (if any, memory-mapped) and compiles the overrides.
    ///
    /// The file must not be modified in place while it is open: replace it by renaming a new
    /// file over it (as `geoipupdate` and [`build_database`] do) and reload.
    pub fn open(path: Option<&Path>, nets: &[NetOverride]) -> Result<Geo, GeoError> {
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
            reader,
            nets: Overrides::new(nets),
            non_public: prefix::non_public(),
        })
    }

    /// Returns facts about the open database, or `None` when there is none.
    pub fn database_info(&self) -> Option<DatabaseInfo> {
        let m = self.reader.as_ref()?.metadata();
        Some(DatabaseInfo {
            database_type: m.database_type.clone(),
            build_epoch: m.build_epoch,
            ip_version: m.ip_version,
            node_count: m.node_count,
        })
    }

    /// Locates `ip`: a `[nets]` override (longest prefix) wins; then non-public addresses
    /// (private, loopback, link-local, CGN, multicast, reserved) have no location; then the
    /// database decides. Never fails: a database error gives no location.
    pub fn locate(&self, ip: IpAddr) -> Located {
        let ip = ip.to_canonical();
        let bits = Bits::of(ip);

        if let Some(o) = self.nets.longest_match(bits) {
            // More specific overrides to the same region do not change the answer.
            let scope = self.nets.narrow(o.net.len, bits, Some(&o.region));
            return Located {
                ip,
                location: None,
                region: Some(o.region.clone()),
                source: LocationSource::Nets,
                prefix_len: scope,
            };
        }

        let none = |scope: u8| Located {
            ip,
            location: None,
            region: None,
            source: LocationSource::None,
            prefix_len: scope,
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
                    prefix_len: scope,
                }
            }
            // Non-public blocks inside an unknown network answer the same (no location).
            None => none(self.nets.narrow(db_len, bits, None)),
        }
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

/// Returns the great-circle distance in km between two points given in degrees (haversine on a
/// sphere of radius 6371 km; error under 0.5% against the ellipsoid, plenty to rank regions).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
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
