//! GeoIP: where a client is.
//!
//! Owns the MaxMind-format database reader (memory-mapped), the `[nets]` CIDR overrides and the
//! great-circle distance. Does no I/O after [`Geo::open`] and never reads the clock.
//! Key types: [`Geo`], [`Located`], [`Location`].
//!
//! STUB: replaced by the geo work (issue 3).

use std::net::IpAddr;
use std::path::Path;

use crate::config::NetOverride;

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
}

/// A point on Earth and the codes that `geo` maps use.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// ISO 3166 country code, uppercase, when known.
    pub country: Option<String>,
    /// Continent code (AF AN AS EU NA OC SA), when known.
    pub continent: Option<String>,
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
    /// The region of a matching `[nets]` override.
    pub region: Option<String>,
    /// Which source decided.
    pub source: LocationSource,
    /// Prefix length of the largest network around `ip` on which this result is the same
    /// (the matched database or `[nets]` network, narrowed by any more specific override inside
    /// it). In bits of `ip`'s family.
    pub prefix_len: u8,
}

/// A GeoIP database plus CIDR overrides.
#[derive(Debug)]
pub struct Geo {
    nets: Vec<NetOverride>,
}

impl Geo {
    /// Opens the database at `path` (if any) and compiles the overrides.
    pub fn open(_path: Option<&Path>, nets: &[NetOverride]) -> Result<Geo, GeoError> {
        Ok(Geo {
            nets: nets.to_vec(),
        })
    }

    /// Locates `ip`.
    pub fn locate(&self, ip: IpAddr) -> Located {
        let ip = ip.to_canonical();
        let _ = &self.nets;
        Located {
            ip,
            location: None,
            region: None,
            source: LocationSource::None,
            prefix_len: 0,
        }
    }
}

/// Returns the great-circle distance in km between two points given in degrees.
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}
