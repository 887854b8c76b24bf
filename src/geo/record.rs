//! Decoding the few fields of a database record that `geo` needs, without allocating.
//!
//! Two record layouts are understood:
//!
//! - the GeoIP2 schema (MaxMind GeoIP2/GeoLite2 City and Country, DB-IP lite):
//!   `location.latitude`, `location.longitude`, `country.iso_code` (falling back to
//!   `registered_country.iso_code`), `continent.code`;
//! - the flat schema some redistributions use: top-level `latitude`, `longitude`,
//!   `country_code` (and `continent_code` if present).
//!
//! Every other field is skipped without being expanded. The visitors are lenient about types
//! (a coordinate may be a double, a float, an integer or a numeric string; a code may be a
//! string or a map holding `code`/`iso_code`) so that one odd field never loses the record.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::Code;

/// The fields of one record that `geo` uses.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Record {
    /// Degrees north.
    pub(super) latitude: Option<f64>,
    /// Degrees east.
    pub(super) longitude: Option<f64>,
    /// `country.iso_code` or the flat `country_code`.
    pub(super) country: Option<Code>,
    /// `registered_country.iso_code`: used when `country` is absent (anycast, satellite).
    pub(super) registered_country: Option<Code>,
    /// `continent.code` or the flat `continent_code`.
    pub(super) continent: Option<Code>,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GeoIP record (map)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut r = Record::default();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Location => {
                    let loc = map.next_value::<LocationField>()?;
                    r.latitude = r.latitude.or(loc.latitude);
                    r.longitude = r.longitude.or(loc.longitude);
                }
                Key::Country => r.country = map.next_value::<CodeField>()?.0.or(r.country),
                Key::RegisteredCountry => r.registered_country = map.next_value::<CodeField>()?.0,
                Key::Continent => r.continent = map.next_value::<CodeField>()?.0.or(r.continent),
                Key::Latitude => r.latitude = map.next_value::<Number>()?.0.or(r.latitude),
                Key::Longitude => r.longitude = map.next_value::<Number>()?.0.or(r.longitude),
                Key::CountryCode => r.country = r.country.or(map.next_value::<CodeField>()?.0),
                Key::ContinentCode => {
                    r.continent = r.continent.or(map.next_value::<CodeField>()?.0)
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(r)
    }
}

/// The keys the record visitor cares about (top level).
enum Key {
    Location,
    Country,
    RegisteredCountry,
    Continent,
    Latitude,
    Longitude,
    CountryCode,
    ContinentCode,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(KeyVisitor)
    }
}

struct KeyVisitor;

impl KeyVisitor {
    fn key(v: &[u8]) -> Key {
        match v {
            b"location" => Key::Location,
            b"country" => Key::Country,
            b"registered_country" => Key::RegisteredCountry,
            b"continent" => Key::Continent,
            b"latitude" => Key::Latitude,
            b"longitude" => Key::Longitude,
            b"country_code" => Key::CountryCode,
            b"continent_code" => Key::ContinentCode,
            _ => Key::Other,
        }
    }
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Self::key(v.as_bytes()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
        Ok(Self::key(v))
    }
}

/// A key inside `location`, `country`, `continent`: only a handful matter.
enum InnerKey {
    Latitude,
    Longitude,
    Code,
    Other,
}

impl<'de> Deserialize<'de> for InnerKey {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_identifier(InnerKeyVisitor)
    }
}

struct InnerKeyVisitor;

impl InnerKeyVisitor {
    fn key(v: &[u8]) -> InnerKey {
        match v {
            b"latitude" => InnerKey::Latitude,
            b"longitude" => InnerKey::Longitude,
            b"iso_code" | b"code" => InnerKey::Code,
            _ => InnerKey::Other,
        }
    }
}

impl<'de> Visitor<'de> for InnerKeyVisitor {
    type Value = InnerKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<InnerKey, E> {
        Ok(Self::key(v.as_bytes()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<InnerKey, E> {
        Ok(Self::key(v))
    }
}

/// The `location` map: coordinates only.
#[derive(Default)]
struct LocationField {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl<'de> Deserialize<'de> for LocationField {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LocationVisitor)
    }
}

struct LocationVisitor;

impl<'de> Visitor<'de> for LocationVisitor {
    type Value = LocationField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a location map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LocationField, A::Error> {
        let mut loc = LocationField::default();
        while let Some(key) = map.next_key::<InnerKey>()? {
            match key {
                InnerKey::Latitude => loc.latitude = map.next_value::<Number>()?.0,
                InnerKey::Longitude => loc.longitude = map.next_value::<Number>()?.0,
                InnerKey::Code | InnerKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(loc)
    }

    // Anything else (a string, a number…) carries no coordinates: ignore it.
    fn visit_str<E: de::Error>(self, _: &str) -> Result<LocationField, E> {
        Ok(LocationField::default())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<LocationField, E> {
        Ok(LocationField::default())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<LocationField, E> {
        Ok(LocationField::default())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<LocationField, E> {
        Ok(LocationField::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LocationField, E> {
        Ok(LocationField::default())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<LocationField, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LocationField::default())
    }
}

/// A country or continent code: a string, or a map holding `iso_code`/`code`. Anything that is
/// not two ASCII letters is treated as absent.
struct CodeField(Option<Code>);

impl<'de> Deserialize<'de> for CodeField {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CodeVisitor)
    }
}

struct CodeVisitor;

impl<'de> Visitor<'de> for CodeVisitor {
    type Value = CodeField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a code or a map with a code")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeField, E> {
        Ok(CodeField(Code::new(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CodeField, A::Error> {
        let mut code = None;
        while let Some(key) = map.next_key::<InnerKey>()? {
            match key {
                InnerKey::Code => code = code.or(map.next_value::<CodeField>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(CodeField(code))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<CodeField, E> {
        Ok(CodeField(None))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<CodeField, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(CodeField(None))
    }
}

/// A number of any MMDB numeric type (or a numeric string); other types are absent.
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

struct NumberVisitor;

impl<'de> Visitor<'de> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number(Some(v)))
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Number, E> {
        Ok(Number(Some(f64::from(v))))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        // Coordinates are within ±180: an integer this large is not one anyway.
        Ok(Number(Some(v as f64)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number(Some(v as f64)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Number, E> {
        Ok(Number(Some(v as f64)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        Ok(Number(v.trim().parse().ok()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Number, E> {
        Ok(Number(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Number(None))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Number(None))
    }
}
