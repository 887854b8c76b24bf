//! Automatic reload: watches the config file, every zone file, the GeoIP database, the PEM
//! certificates, keys and client CA of DoT and of the admin port, and the DNS cookie secret
//! file, and runs the same reload as SIGHUP when one of them changes (so a certificate
//! renewed by cert-manager or certbot is served without a signal).
//!
//! It polls a content hash of each file every `server.watch_interval` (default 5 s) instead of
//! asking the kernel for events, as CoreDNS's `reload` plugin does: Kubernetes updates a mounted
//! ConfigMap by swapping a `..data` symlink (the files' own inodes never change), and
//! geoipupdate replaces its database by renaming a new file over it; a watch on the old file
//! misses both, reading the path again sees them. A file is read and hashed only when its
//! metadata (device, inode, size, modification and change times) differs from the last look,
//! so a poll of unchanged files costs a few `stat` calls.
//!
//! A change is reloaded once it has stayed the same for a short settle time (a file being
//! written is not loaded half-way). A change that fails to load keeps the old snapshot: its
//! errors are logged once, and the watcher tries again only when the files change again.
//!
//! The watcher does not own reloading: [`Reloader`] does (serialized with SIGHUP and
//! `POST /reload`, counted in `meridian_config_reloads_total`). The admin token file is not
//! watched: it is re-read on every call. The `[cluster]` TLS files are not either: the store
//! client is set up at start only.
//!
//! Key types: [`Fingerprint`] (what the files looked like), [`Hasher`] (the per-file cache).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher as _;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, DEFAULT_WATCH_INTERVAL};
use crate::snapshot::{Reloader, SnapshotCell};

/// How long a change must stay the same before it is reloaded.
const SETTLE: Duration = Duration::from_millis(250);

/// The content hash of each watched file; `None` for a file that cannot be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Fingerprint(BTreeMap<PathBuf, Option<u64>>);

impl Fingerprint {
    /// Returns the files whose content differs between `self` and `other` (or that are in
    /// only one of them).
    pub(crate) fn changed(&self, other: &Fingerprint) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (path, hash) in &self.0 {
            if other.0.get(path) != Some(hash) {
                out.push(path.clone());
            }
        }
        for path in other.0.keys() {
            if !self.0.contains_key(path) {
                out.push(path.clone());
            }
        }
        out
    }
}

/// The metadata that changes whenever a file's content may have: a rename or a symlink swap
/// changes the inode, a write the size or the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Hashes files, remembering each file's last hash with the metadata it was taken at.
#[derive(Debug, Default)]
pub(crate) struct Hasher {
    cache: HashMap<PathBuf, (Stamp, u64)>,
}

impl Hasher {
    /// Returns the fingerprint of `files`, reading only those whose metadata changed. Follows
    /// symlinks, so a swapped `..data` link counts as a change of every file behind it.
    pub(crate) fn fingerprint(&mut self, files: &[PathBuf]) -> Fingerprint {
        let mut out = BTreeMap::new();
        for path in files {
            out.insert(path.clone(), self.hash(path));
        }
        self.cache.retain(|p, _| out.contains_key(p));
        Fingerprint(out)
    }

    fn hash(&mut self, path: &Path) -> Option<u64> {
        let Ok(meta) = std::fs::metadata(path) else {
            self.cache.remove(path);
            return None;
        };
        let stamp = Stamp::of(&meta);
        if let Some((s, h)) = self.cache.get(path)
            && *s == stamp
        {
            return Some(*h);
        }
        let hash = hash_file(path)?;
        self.cache.insert(path.to_path_buf(), (stamp, hash));
        Some(hash)
    }
}

/// Returns a hash of the content of the file at `path` (SipHash, not cryptographic: it only
/// has to notice changes), reading it in blocks so a large GeoIP database is never held whole.
fn hash_file(path: &Path) -> Option<u64> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hasher.finish()),
            Ok(n) => hasher.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Returns the files a snapshot of `config` was built from: the config file, the zone files,
/// the GeoIP database, the PEM files of DoT and of the admin port, and the cookie secrets.
pub(crate) fn watched_files(config: &Config) -> Vec<PathBuf> {
    let server = &config.server;
    let mut files = vec![config.source.clone()];
    files.extend(config.zones.iter().map(|z| z.file.clone()));
    for f in [
        &server.geoip,
        &server.tls_certificate,
        &server.tls_key,
        &server.admin_tls_certificate,
        &server.admin_tls_key,
        &server.admin_client_ca,
        &server.cookie_secret_file,
    ] {
        if let Some(f) = f
            && !files.contains(f)
        {
            files.push(f.clone());
        }
    }
    files
}

/// What the watcher knows between two polls.
#[derive(Debug)]
struct Watch {
    reloader: Reloader,
    snapshot: SnapshotCell,
    hasher: Hasher,
    /// The files as last loaded, or as last refused.
    current: Fingerprint,
    /// A change seen once, waiting to be seen again unchanged after [`SETTLE`].
    pending: Option<Fingerprint>,
}

/// What the loop does after a poll.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Nothing to do until the next interval.
    Wait,
    /// A change is settling: look again soon.
    Settle,
}

impl Watch {
    fn new(reloader: Reloader, snapshot: SnapshotCell) -> Self {
        let mut hasher = Hasher::default();
        let current = hasher.fingerprint(&watched_files(&snapshot.load().config));
        Self {
            reloader,
            snapshot,
            hasher,
            current,
            pending: None,
        }
    }

    /// Looks at the files once; reloads when they changed and settled. Blocks on file I/O.
    fn poll(&mut self) -> Next {
        let files = watched_files(&self.snapshot.load().config);
        let seen = self.hasher.fingerprint(&files);
        if seen == self.current {
            self.pending = None;
            return Next::Wait;
        }
        if self.pending.as_ref() != Some(&seen) {
            self.pending = Some(seen);
            return Next::Settle;
        }
        self.pending = None;
        let changed: Vec<String> = seen
            .changed(&self.current)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        info!(files = %changed.join(", "), "watched files changed, reloading");
        match self.reloader.reload() {
            Ok(()) => {
                // The new config may name other files: watch those from now on. A change made
                // between the reload and this look is seen at the next poll.
                let files = watched_files(&self.snapshot.load().config);
                let mut now = self.hasher.fingerprint(&files);
                // Files the reload read keep the hash seen before it, so that a write during
                // the reload still counts as a change.
                for (path, hash) in &seen.0 {
                    if let Some(h) = now.0.get_mut(path) {
                        *h = *hash;
                    }
                }
                self.current = now;
            }
            Err(errors) => {
                for e in &errors.0 {
                    warn!(error = %e, "automatic reload failed, keeping the old configuration");
                }
                // Said once: the same broken files are not tried again.
                self.current = seen;
            }
        }
        Next::Wait
    }
}

/// Watches the files of the live snapshot until `token` is cancelled, reloading through
/// `reloader` on change. The interval is read from the live config at each poll, so a reload
/// can change it; `watch_interval = "0s"` pauses the watcher.
pub(crate) async fn run(reloader: Reloader, snapshot: SnapshotCell, token: CancellationToken) {
    let interval_of = |s: &SnapshotCell| s.load().config.server.watch_interval;
    let s = snapshot.clone();
    let Ok(mut watch) = tokio::task::spawn_blocking(move || Watch::new(reloader, s)).await else {
        return;
    };
    if let Some(every) = interval_of(&snapshot) {
        info!(
            files = watch.current.0.len(),
            interval = ?every,
            "watching the config, zone, GeoIP, PEM and cookie secret files for changes"
        );
    }
    let mut next = Next::Wait;
    loop {
        let pause = match (&next, interval_of(&snapshot)) {
            (Next::Settle, _) => SETTLE,
            (Next::Wait, Some(every)) => every,
            (Next::Wait, None) => DEFAULT_WATCH_INTERVAL,
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if interval_of(&snapshot).is_none() {
            next = Next::Wait;
            continue;
        }
        // File reads and the reload itself block: off the async workers.
        match tokio::task::spawn_blocking(move || {
            let n = watch.poll();
            (watch, n)
        })
        .await
        {
            Ok((w, n)) => {
                watch = w;
                next = n;
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn same_content_same_fingerprint_and_a_write_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        write(&a, "one");
        let mut h = Hasher::default();
        let first = h.fingerprint(std::slice::from_ref(&a));
        assert_eq!(h.fingerprint(std::slice::from_ref(&a)), first);
        write(&a, "two");
        let second = h.fingerprint(std::slice::from_ref(&a));
        assert_ne!(second, first);
        assert_eq!(second.changed(&first), vec![a.clone()]);
        // Rewriting the same content changes the times but not the fingerprint.
        write(&a, "two");
        assert_eq!(h.fingerprint(std::slice::from_ref(&a)), second);
    }

    #[test]
    fn a_file_replaced_by_rename_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let new = dir.path().join("db.new");
        write(&db, "old database");
        let mut h = Hasher::default();
        let before = h.fingerprint(std::slice::from_ref(&db));
        write(&new, "new database");
        std::fs::rename(&new, &db).unwrap();
        assert_ne!(h.fingerprint(std::slice::from_ref(&db)), before);
    }

    #[test]
    fn a_swapped_data_symlink_is_a_change_of_the_file_behind_it() {
        // Kubernetes' ConfigMap volume: file -> ..data/file, ..data -> ..<timestamp>.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (v, text) in [("..v1", "first"), ("..v2", "second")] {
            std::fs::create_dir(d.join(v)).unwrap();
            write(&d.join(v).join("meridian.toml"), text);
        }
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/meridian.toml", d.join("meridian.toml")).unwrap();
        let file = d.join("meridian.toml");
        let mut h = Hasher::default();
        let before = h.fingerprint(std::slice::from_ref(&file));
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let after = h.fingerprint(std::slice::from_ref(&file));
        assert_ne!(after, before);
        assert_eq!(after.changed(&before), vec![file]);
    }

    #[test]
    fn the_pem_files_and_the_cookie_secrets_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(&d.join("zone"), "");
        write(&d.join("cookie.secret"), &"ab".repeat(16));
        write(
            &d.join("meridian.toml"),
            "[server]\ntls_listen = [\"127.0.0.1:0\"]\ntls_certificate = \"dot.crt\"\n\
             tls_key = \"dot.key\"\nadmin_tls_certificate = \"admin.crt\"\n\
             admin_tls_key = \"admin.key\"\nadmin_client_ca = \"ca.crt\"\n\
             cookie_secret_file = \"cookie.secret\"\n\
             [[zone]]\norigin = \"example.net.\"\nfile = \"zone\"\n",
        );
        let config = crate::config::load(&d.join("meridian.toml")).unwrap();
        let files = watched_files(&config);
        for f in [
            "meridian.toml",
            "zone",
            "dot.crt",
            "dot.key",
            "admin.crt",
            "admin.key",
            "ca.crt",
            "cookie.secret",
        ] {
            assert!(files.contains(&d.join(f)), "{f} not in {files:?}");
        }
    }

    #[test]
    fn a_missing_file_is_part_of_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let mut h = Hasher::default();
        let missing = h.fingerprint(std::slice::from_ref(&a));
        assert_eq!(missing.0.get(&a), Some(&None));
        write(&a, "here now");
        assert_ne!(h.fingerprint(std::slice::from_ref(&a)), missing);
    }
}
