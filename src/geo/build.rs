//! Building a small GeoIP database from a CSV file (`meridian geodata build`).
//!
//! The CSV has a header line `network,latitude,longitude,country,continent` and one network per
//! line; blank lines and lines starting with `#` are ignored. `latitude`/`longitude` may both be
//! empty (a country-only record), as may `country` and `continent`. Fields hold no commas, so
//! there is no quoting.
//!
//! The output uses the GeoIP2 City record layout (`continent.code`, `country.iso_code`,
//! `location.latitude`, `location.longitude`) in an IPv6 tree with IPv4 aliased, so any
//! MaxMind reader (`maxminddb`, `mmdblookup`) reads it. More specific networks win regardless
//! of their order in the file. The build epoch is fixed, so the same CSV always gives the same
//! bytes.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use mmdb_writer::{Value, Writer};

use super::{Code, GeoError};

/// `database_type` written into the metadata.
pub(crate) const DATABASE_TYPE: &str = "Meridian-Sample-City";

/// Build epoch written into the metadata (2026-01-01T00:00:00Z), fixed for reproducible output.
pub(crate) const BUILD_EPOCH: u64 = 1_767_225_600;

/// The CSV header `build_database` expects.
pub(crate) const CSV_HEADER: &str = "network,latitude,longitude,country,continent";

/// The continent codes GeoIP2 uses.
const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// What [`build_database`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Networks written (CSV data lines).
    pub networks: usize,
    /// Of which IPv4.
    pub ipv4_networks: usize,
    /// Of which IPv6.
    pub ipv6_networks: usize,
    /// Size of the database file in bytes.
    pub bytes: usize,
}

/// One parsed CSV data line.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    /// 1-based line number in the CSV.
    pub(super) line: usize,
    pub(super) network: IpNet,
    pub(super) coordinates: Option<(f64, f64)>,
    pub(super) country: Option<Code>,
    pub(super) continent: Option<Code>,
}

/// Reads the CSV at `csv` and writes a MaxMind-format database to `out` (atomically: a
/// temporary file in the same directory is renamed over `out`, so a running server that has
/// the old file mapped is unaffected until it reloads). Errors name the CSV line.
pub fn build_database(csv: &Path, out: &Path) -> Result<BuildReport, GeoError> {
    let csv_name = csv.display().to_string();
    let text = fs::read_to_string(csv).map_err(|e| GeoError::Csv {
        path: csv_name.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let rows = parse_csv(&text, &csv_name)?;
    let bytes = encode(&rows).map_err(|message| GeoError::Write {
        path: out.display().to_string(),
        message,
    })?;
    write_atomically(out, &bytes)?;
    Ok(BuildReport {
        networks: rows.len(),
        ipv4_networks: rows.iter().filter(|r| r.network.addr().is_ipv4()).count(),
        ipv6_networks: rows.iter().filter(|r| r.network.addr().is_ipv6()).count(),
        bytes: bytes.len(),
    })
}

/// Parses the CSV text; `path` only names the file in errors.
pub(super) fn parse_csv(text: &str, path: &str) -> Result<Vec<Row>, GeoError> {
    let err = |line: usize, message: String| GeoError::Csv {
        path: path.to_string(),
        line,
        message,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut seen: HashMap<IpNet, usize> = HashMap::new();
    let mut header_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !header_seen {
            let header: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            if header.join(",") != CSV_HEADER {
                return Err(err(
                    line,
                    format!("expected the header {CSV_HEADER:?}, found {trimmed:?}"),
                ));
            }
            header_seen = true;
            continue;
        }
        let row = parse_row(trimmed, line).map_err(|m| err(line, m))?;
        if let Some(first) = seen.insert(row.network, line) {
            return Err(err(
                line,
                format!("network {} is already on line {first}", row.network),
            ));
        }
        rows.push(row);
    }
    if !header_seen {
        return Err(err(
            0,
            format!("empty file: expected the header {CSV_HEADER:?}"),
        ));
    }
    Ok(rows)
}

/// Parses one data line (already trimmed).
fn parse_row(line_text: &str, line: usize) -> Result<Row, String> {
    let fields: Vec<&str> = line_text.split(',').map(str::trim).collect();
    let [network, lat, lon, country, continent] = fields[..] else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    let parsed: IpNet = network
        .parse()
        .map_err(|_| format!("network {network:?} is not a CIDR network"))?;
    if parsed.trunc() != parsed {
        return Err(format!(
            "network {network} has host bits set (did you mean {}?)",
            parsed.trunc()
        ));
    }
    let coordinates = match (lat, lon) {
        ("", "") => None,
        ("", _) | (_, "") => {
            return Err("latitude and longitude must both be given or both be empty".into());
        }
        (lat, lon) => {
            let lat: f64 = lat
                .parse()
                .ok()
                .filter(|v: &f64| (-90.0..=90.0).contains(v))
                .ok_or_else(|| format!("latitude {lat:?} is not a number within -90..=90"))?;
            let lon: f64 = lon
                .parse()
                .ok()
                .filter(|v: &f64| (-180.0..=180.0).contains(v))
                .ok_or_else(|| format!("longitude {lon:?} is not a number within -180..=180"))?;
            Some((lat, lon))
        }
    };
    let country = match country {
        "" => None,
        c => Some(
            Code::new(c)
                .filter(|_| c.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| format!("country {c:?} is not a two-letter uppercase code"))?,
        ),
    };
    let continent = match continent {
        "" => None,
        c => Some(
            Code::new(c)
                .filter(|_| CONTINENTS.contains(&c))
                .ok_or_else(|| format!("continent {c:?} is not one of {}", CONTINENTS.join(" ")))?,
        ),
    };
    if coordinates.is_none() && country.is_none() && continent.is_none() {
        return Err(format!(
            "network {network} has no location, country or continent"
        ));
    }
    Ok(Row {
        line,
        network: parsed,
        coordinates,
        country,
        continent,
    })
}

/// Encodes the rows as an mmdb file.
pub(super) fn encode(rows: &[Row]) -> Result<Vec<u8>, String> {
    let mut writer = Writer::builder(DATABASE_TYPE)
        .description(&[(
            "en",
            "Meridian sample GeoIP data (fictional-ish, not for production)",
        )])
        .build_epoch(UNIX_EPOCH + Duration::from_secs(BUILD_EPOCH))
        .build();
    // The writer lets later inserts win; insert wider networks first so the most specific
    // network wins whatever the CSV order.
    let mut ordered: Vec<&Row> = rows.iter().collect();
    ordered.sort_by_key(|r| (r.network.addr().is_ipv6(), r.network.prefix_len()));
    for row in ordered {
        writer
            .insert_value(row.network, record(row))
            .map_err(|e| format!("line {}: network {}: {e}", row.line, row.network))?;
    }
    writer.to_bytes().map_err(|e| e.to_string())
}

/// Returns the GeoIP2 City-shaped record of one row.
fn record(row: &Row) -> Value {
    let mut fields: Vec<(&str, Value)> = Vec::new();
    if let Some(c) = row.continent {
        fields.push(("continent", Value::map([("code", Value::from(c.as_str()))])));
    }
    if let Some(c) = row.country {
        fields.push((
            "country",
            Value::map([("iso_code", Value::from(c.as_str()))]),
        ));
    }
    if let Some((lat, lon)) = row.coordinates {
        fields.push((
            "location",
            Value::map([
                ("latitude", Value::Double(lat)),
                ("longitude", Value::Double(lon)),
            ]),
        ));
    }
    Value::map(fields)
}

/// Writes `bytes` to a temporary file next to `out`, then renames it over `out`.
fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), GeoError> {
    let err = |e: std::io::Error| GeoError::Write {
        path: out.display().to_string(),
        message: e.to_string(),
    };
    let file_name = out.file_name().ok_or_else(|| GeoError::Write {
        path: out.display().to_string(),
        message: "not a file path".into(),
    })?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = out.with_file_name(tmp_name);
    fs::write(&tmp, bytes).map_err(err)?;
    fs::rename(&tmp, out).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })
}
