//! Operator overrides (region and target drains), persisted to `server.state_file`.
//!
//! The file is JSON (`{"version": 1, "drained_regions": ["eu-west"], "drained_targets":
//! ["192.0.2.10"], "details": {"regions/eu-west": {"who": ..., "at": ..., "reason": ...,
//! "expires": ...}}}`), written atomically: a
//! temporary file in the same directory is written and fsynced, renamed over the old file, and
//! the directory is fsynced, so a crash leaves either the old or the new file, never half of one.
//! A missing file means "nothing drained"; a file that cannot be read or parsed is an error, so
//! a process never silently forgets a drain an operator made.
//!
//! With a `[cluster]` table the drains live in etcd (`crate::cluster`) and this file is the
//! instance's cache of them: an instance that starts while etcd is down serves the last known
//! drains. Each drain carries a [`Drain`] record (who, when, why, optional expiry), keyed by
//! [`Subject::key`] (`regions/NAME`, `targets/ADDRESS`, as in the admin paths and etcd keys).
//!
//! This module does blocking file I/O; callers in async code run it on a blocking thread.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The format version written to the state file.
pub(crate) const STATE_FILE_VERSION: u32 = 1;

/// A problem with the state file.
#[derive(Debug, thiserror::Error)]
pub enum OverridesError {
    /// The file exists but cannot be read.
    #[error("state file {}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid overrides JSON.
    #[error("state file {}: corrupt (fix or remove it): {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The file has a version this build does not know.
    #[error("state file {}: unsupported version {version}", path.display())]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// Writing the file failed.
    #[error("state file {}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The operator's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Overrides {
    /// The file format version.
    #[serde(default = "current_version")]
    pub(crate) version: u32,
    /// Regions withdrawn from every answer, sorted.
    #[serde(default)]
    pub(crate) drained_regions: BTreeSet<String>,
    /// Target addresses withdrawn from every answer, sorted (absent in files written before
    /// per-target drains: none).
    #[serde(default)]
    pub drained_targets: BTreeSet<IpAddr>,
    /// Who drained what, when, why and until when, by [`Subject::key`] (absent in files
    /// written before drain records: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Drain>,
}

/// What a drain withdraws.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Subject {
    /// A region of the config, in every service.
    Region(String),
    /// One endpoint address, in every service.
    Target(IpAddr),
}

impl Subject {
    /// Returns the key of this subject in drain records, etcd and admin paths:
    /// `regions/NAME` or `targets/ADDRESS`.
    pub(crate) fn key(&self) -> String {
        match self {
            Subject::Region(r) => format!("regions/{r}"),
            Subject::Target(a) => format!("targets/{a}"),
        }
    }

    /// Parses [`Subject::key`] back.
    pub(crate) fn from_key(key: &str) -> Option<Subject> {
        let (kind, name) = key.split_once('/')?;
        match kind {
            "regions" if !name.is_empty() && !name.contains('/') => {
                Some(Subject::Region(name.to_string()))
            }
            "targets" => name.parse().ok().map(Subject::Target),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Region(r) => write!(f, "region {r}"),
            Subject::Target(a) => write!(f, "target {a}"),
        }
    }
}

/// The record of one drain: who made it, when, why, and when it ends by itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Drain {
    /// Who asked for it (`ctl` sends `user@host`; otherwise the admin client's address).
    #[serde(default)]
    pub who: String,
    /// When it was made (RFC 3339).
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Why, as the operator wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it ends by itself (RFC 3339), if ever.
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    pub expires: Option<SystemTime>,
    /// The instance that took the call (in a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Drain {
    /// Returns a record made now by `who`, without reason or expiry.
    #[cfg(test)]
    pub(crate) fn now(who: impl Into<String>) -> Self {
        Drain {
            who: who.into(),
            at: SystemTime::now(),
            reason: None,
            expires: None,
            instance: None,
        }
    }

    /// Returns true when the drain has ended by itself at `now`.
    pub(crate) fn is_expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// How a drain changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainChange {
    /// It began, or its record changed (who, reason or expiry).
    Set,
    /// An operator ended it (or the fleet's store no longer has it) before any expiry.
    Lifted,
    /// Its expiry passed.
    Expired,
}

impl DrainChange {
    /// Returns the name used in notifications: `drained`, `undrained`, `drain_expired`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DrainChange::Set => "drained",
            DrainChange::Lifted => "undrained",
            DrainChange::Expired => "drain_expired",
        }
    }
}

/// One change of the drains in force, with the drain's record (the new one when it was set,
/// the last one when it ended; `None` for a drain from a state file without records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DrainEvent {
    /// What changed, as [`Subject::key`] (`regions/NAME`, `targets/ADDRESS`).
    pub(crate) subject: String,
    /// How it changed.
    pub(crate) change: DrainChange,
    /// Who, when, why, until when.
    pub(crate) record: Option<Drain>,
    /// When the change was made.
    pub(crate) at: SystemTime,
}

/// Two expiries closer than this are the same news: `meridian ctl drain --expires` asks every
/// instance of a fleet in turn and each computes its own expiry (and a record read back from a
/// file or the fleet's store keeps milliseconds only).
pub(crate) const EXPIRY_SAME_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Returns true when two records tell a person the same thing: who, why and until when
/// (within [`EXPIRY_SAME_WITHIN`]).
fn same_notice(a: Option<&Drain>, b: Option<&Drain>) -> bool {
    let close = |x: Option<SystemTime>, y: Option<SystemTime>| match (x, y) {
        (Some(x), Some(y)) => {
            let gap = x.duration_since(y).or_else(|_| y.duration_since(x));
            gap.is_ok_and(|g| g < EXPIRY_SAME_WITHIN)
        }
        (x, y) => x == y,
    };
    match (a, b) {
        (Some(a), Some(b)) => a.who == b.who && a.reason == b.reason && close(a.expires, b.expires),
        (None, None) => true,
        _ => false,
    }
}

/// Parses the RFC 3339 UTC times that [`super::format_rfc3339`] writes
/// (`2024-05-01T12:00:00.123Z`, fraction optional).
pub(crate) fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis = match s.get(19..s.len() - 1)? {
        "" => 0,
        frac if frac.starts_with('.') && frac.len() > 1 => {
            let digits = &frac[1..frac.len().min(4)];
            digits.parse::<u64>().ok()? * 10u64.pow(3 - digits.len() as u32)
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let secs = u64::try_from(secs).ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(secs)
            + std::time::Duration::from_millis(millis),
    )
}

mod rfc3339 {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::health::format_rfc3339(*t))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<SystemTime, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        super::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 UTC time")))
    }
}

mod opt_rfc3339 {
    use std::time::SystemTime;

    pub(super) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let s: Option<String> = serde::Deserialize::deserialize(d)?;
        s.map(|s| {
            super::parse_rfc3339(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an RFC 3339 UTC time"))
            })
        })
        .transpose()
    }
}

fn current_version() -> u32 {
    STATE_FILE_VERSION
}

impl Overrides {
    /// Returns overrides with nothing drained.
    pub(crate) fn empty() -> Self {
        Self {
            version: STATE_FILE_VERSION,
            drained_regions: BTreeSet::new(),
            drained_targets: BTreeSet::new(),
            details: BTreeMap::new(),
        }
    }

    /// Drains `subject` with `record` (`Some`) or undrains it (`None`). Returns true when
    /// whether it is drained changed.
    pub(crate) fn set(&mut self, subject: &Subject, record: Option<Drain>) -> bool {
        let changed = match (subject, record.is_some()) {
            (Subject::Region(r), true) => self.drained_regions.insert(r.clone()),
            (Subject::Region(r), false) => self.drained_regions.remove(r),
            (Subject::Target(a), true) => self.drained_targets.insert(*a),
            (Subject::Target(a), false) => self.drained_targets.remove(a),
        };
        match record {
            Some(d) => {
                self.details.insert(subject.key(), d);
            }
            None => {
                self.details.remove(&subject.key());
            }
        }
        changed
    }

    /// Removes the drains whose expiry is at or before `now`; returns what was removed.
    pub(crate) fn expire(&mut self, now: SystemTime) -> Vec<Subject> {
        let gone: Vec<Subject> = self
            .details
            .iter()
            .filter(|(_, d)| d.is_expired(now))
            .filter_map(|(k, _)| Subject::from_key(k))
            .collect();
        for s in &gone {
            self.set(s, None);
        }
        gone
    }

    /// Returns the subject keys drained now, sorted.
    fn keys(&self) -> BTreeSet<String> {
        let regions = self.drained_regions.iter().map(|r| format!("regions/{r}"));
        let targets = self.drained_targets.iter().map(|a| format!("targets/{a}"));
        regions.chain(targets).collect()
    }

    /// Returns the changes from `self` to `next` at `now`: drains that began or whose record
    /// says something new ([`DrainChange::Set`]), and drains that ended, [`DrainChange::Expired`]
    /// when their expiry is at or before `now`, else [`DrainChange::Lifted`].
    pub(crate) fn changes(&self, next: &Overrides, now: SystemTime) -> Vec<DrainEvent> {
        let (before, after) = (self.keys(), next.keys());
        let mut out = Vec::new();
        for key in &after {
            let record = next.details.get(key);
            if !before.contains(key) || !same_notice(self.details.get(key), record) {
                out.push(DrainEvent {
                    subject: key.clone(),
                    change: DrainChange::Set,
                    record: record.cloned(),
                    at: now,
                });
            }
        }
        for key in before.difference(&after) {
            let record = self.details.get(key);
            let change = if record.is_some_and(|d| d.is_expired(now)) {
                DrainChange::Expired
            } else {
                DrainChange::Lifted
            };
            out.push(DrainEvent {
                subject: key.clone(),
                change,
                record: record.cloned(),
                at: now,
            });
        }
        out
    }

    /// Reads `path`; a missing file gives empty overrides.
    pub(crate) fn load(path: &Path) -> Result<Self, OverridesError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(source) => {
                return Err(OverridesError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let o: Overrides =
            serde_json::from_str(&text).map_err(|source| OverridesError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if o.version != STATE_FILE_VERSION {
            return Err(OverridesError::Version {
                path: path.to_path_buf(),
                version: o.version,
            });
        }
        Ok(o)
    }

    /// Writes the overrides to `path` atomically, creating its directory if needed.
    pub(crate) fn save(&self, path: &Path) -> Result<(), OverridesError> {
        write_atomically(path, &self.to_json()).map_err(|source| OverridesError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of a u32 and strings cannot fail.
        let mut v = serde_json::to_vec_pretty(self).expect("overrides serialize");
        v.push(b'\n');
        v
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory, then renames it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "meridian-overrides-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rfc3339_round_trips_through_the_formatter() {
        for secs in [0u64, 951_782_400, 1_700_000_000, 4_102_444_799] {
            let t = SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(secs)
                + std::time::Duration::from_millis(secs % 1000);
            let s = crate::health::format_rfc3339(t);
            assert_eq!(parse_rfc3339(&s), Some(t), "{s}");
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z"),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        );
        for bad in [
            "",
            "2023-11-14 22:13:20Z",
            "2023-13-14T22:13:20Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn drain_records_round_trip_and_expire() {
        let dir = scratch("records");
        let path = dir.join("state.json");
        let mut o = Overrides::empty();
        let now = SystemTime::now();
        let mut d = Drain::now("alice@ops");
        d.reason = Some("maintenance".into());
        d.expires = Some(now + std::time::Duration::from_secs(60));
        assert!(o.set(&Subject::Region("eu-west".into()), Some(d)));
        assert!(o.set(
            &Subject::Target("192.0.2.10".parse().unwrap()),
            Some(Drain::now("bob"))
        ));
        o.save(&path).unwrap();
        let mut back = Overrides::load(&path).unwrap();
        assert_eq!(back.details.len(), 2);
        assert_eq!(back.details["regions/eu-west"].who, "alice@ops");
        assert!(back.expire(now).is_empty());
        let gone = back.expire(now + std::time::Duration::from_secs(61));
        assert_eq!(gone, [Subject::Region("eu-west".into())]);
        assert!(back.drained_regions.is_empty());
        assert_eq!(back.drained_targets.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_tell_drains_set_changed_lifted_and_expired_apart() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let eu = Subject::Region("eu-west".into());
        let t = Subject::Target("192.0.2.10".parse().unwrap());
        let mut d = Drain::now("alice@ops");
        d.reason = Some("kernel upgrade".into());
        d.expires = Some(now + std::time::Duration::from_secs(60));
        let empty = Overrides::empty();
        let mut one = Overrides::empty();
        one.set(&eu, Some(d.clone()));
        one.set(&t, Some(Drain::now("bob")));
        let kinds = |v: Vec<DrainEvent>| -> Vec<(String, DrainChange)> {
            v.into_iter().map(|e| (e.subject, e.change)).collect()
        };
        let set = empty.changes(&one, now);
        assert_eq!(
            kinds(set.clone()),
            [
                ("regions/eu-west".to_string(), DrainChange::Set),
                ("targets/192.0.2.10".to_string(), DrainChange::Set)
            ]
        );
        assert_eq!(set[0].record.as_ref().unwrap().who, "alice@ops");
        assert!(one.changes(&one.clone(), now).is_empty());
        // The same record made a moment later by another instance is no news; a new reason
        // or a new expiry is.
        let mut same = one.clone();
        let mut rounded = d.clone();
        rounded.at = now;
        rounded.expires = Some(now + std::time::Duration::from_millis(60_012));
        same.set(&eu, Some(rounded.clone()));
        assert!(one.changes(&same, now).is_empty());
        let mut longer = rounded.clone();
        longer.expires = Some(now + std::time::Duration::from_secs(3600));
        same.set(&eu, Some(longer));
        assert_eq!(
            kinds(one.changes(&same, now)),
            [("regions/eu-west".to_string(), DrainChange::Set)]
        );
        rounded.reason = Some("kernel upgrade, take 2".into());
        same.set(&eu, Some(rounded));
        assert_eq!(
            kinds(one.changes(&same, now)),
            [("regions/eu-west".to_string(), DrainChange::Set)]
        );
        // Ending: lifted before the expiry, expired at or after it; the record goes along.
        let mut lifted = one.clone();
        lifted.set(&eu, None);
        let gone = one.changes(&lifted, now);
        assert_eq!(
            kinds(gone.clone()),
            [("regions/eu-west".to_string(), DrainChange::Lifted)]
        );
        assert_eq!(
            gone[0].record.as_ref().unwrap().reason.as_deref(),
            Some("kernel upgrade")
        );
        let later = now + std::time::Duration::from_secs(60);
        assert_eq!(
            kinds(one.changes(&lifted, later)),
            [("regions/eu-west".to_string(), DrainChange::Expired)]
        );
        // A drain without a record (an old state file) still has its events.
        let mut bare = Overrides::empty();
        bare.drained_regions.insert("us-east".into());
        let e = bare.changes(&empty, now);
        assert_eq!(
            kinds(e.clone()),
            [("regions/us-east".to_string(), DrainChange::Lifted)]
        );
        assert_eq!(e[0].record, None);
    }

    #[test]
    fn missing_file_loads_as_nothing_drained() {
        let dir = scratch("missing");
        let o = Overrides::load(&dir.join("nope.json")).unwrap();
        assert_eq!(o, Overrides::empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn saved_overrides_load_back_and_leave_no_temporary_files() {
        let dir = scratch("roundtrip");
        let path = dir.join("state").join("overrides.json");
        let mut o = Overrides::empty();
        o.drained_regions.insert("eu-west".into());
        o.save(&path).unwrap();
        o.drained_regions.insert("us-east".into());
        o.save(&path).unwrap();
        assert_eq!(Overrides::load(&path).unwrap(), o);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["overrides.json"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = scratch("corrupt");
        let path = dir.join("overrides.json");
        std::fs::write(&path, "{\"drained_regions\": [").unwrap();
        let err = Overrides::load(&path).unwrap_err();
        assert!(matches!(err, OverridesError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("overrides.json") && msg.contains("corrupt"),
            "{msg}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = scratch("version");
        let path = dir.join("overrides.json");
        std::fs::write(&path, r#"{"version": 9, "drained_regions": []}"#).unwrap();
        let err = Overrides::load(&path).unwrap_err();
        assert!(err.to_string().ends_with("unsupported version 9"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_without_target_drains_still_load_and_target_drains_round_trip() {
        let dir = scratch("targets");
        let path = dir.join("state.json");
        std::fs::write(&path, r#"{"version": 1, "drained_regions": ["eu-west"]}"#).unwrap();
        let o = Overrides::load(&path).unwrap();
        assert!(o.drained_targets.is_empty());
        let mut o = o;
        o.drained_targets.insert("192.0.2.10".parse().unwrap());
        o.drained_targets.insert("2001:db8::1".parse().unwrap());
        o.save(&path).unwrap();
        let back = Overrides::load(&path).unwrap();
        assert_eq!(back.drained_targets, o.drained_targets);
        assert_eq!(back.drained_regions, o.drained_regions);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
