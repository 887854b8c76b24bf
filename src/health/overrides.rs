//! Operator overrides (region drains), persisted to `server.state_file`.
//!
//! The file is JSON (`{"version": 1, "drained_regions": ["eu-west"], "drained_targets":
//! ["192.0.2.10"]}`), written atomically: a
//! temporary file in the same directory is written and fsynced, renamed over the old file, and
//! the directory is fsynced, so a crash leaves either the old or the new file, never half of one.
//! A missing file means "nothing drained"; a file that cannot be read or parsed is an error, so
//! a process never silently forgets a drain an operator made.
//!
//! This module does blocking file I/O; callers in async code run it on a blocking thread.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

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
    pub(crate) drained_targets: BTreeSet<IpAddr>,
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
        }
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
