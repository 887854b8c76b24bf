//! DNSSEC online signing (issue 14): keys, signatures, the signature cache and denial records.
//!
//! Owns the cryptography and the bytes of RRSIG, DNSKEY, DS, CDS, CDNSKEY and NSEC RDATA. It
//! does not decide what an answer holds nor write messages: `crate::dns` hands each RRset of an
//! answer (owner, type, TTL, canonical RDATA) to [`ZoneSigner::rrsigs`] and adds what comes
//! back. Every signature covers exactly the bytes the answer carries, so a dynamic answer
//! (chosen per client and health) is signed like a static one, and identical RRsets share
//! one cached signature ([`cache`]). Denial of existence is compact (RFC 9824): one NSEC at the
//! name asked for, built by [`nsec_rdata`] with [`next_after`].
//! Key types: [`Key`], [`ZoneSigner`], [`Algorithm`].

pub mod cache;
pub mod key;
pub mod signer;

use std::path::Path;

pub use key::{Algorithm, Key, KeyError};
pub use signer::{
    DEFAULT_INCEPTION_OFFSET, DEFAULT_SIGNATURE_VALIDITY, ZoneSigner, labels, name_before,
    next_after, nsec_rdata, rtype, sibling_after,
};

use crate::config::DnssecSpec;

/// Loads the keys of `spec` for the zone `origin` (`example.net.`) and returns its signer; the
/// problems found otherwise, as (key under `dnssec.`, message).
pub fn load_signer(
    spec: &DnssecSpec,
    origin: &str,
    key_ttl: u32,
) -> Result<ZoneSigner, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let mut load = |list: &[std::path::PathBuf], name: &str| -> Vec<Key> {
        let mut keys = Vec::new();
        for (i, path) in list.iter().enumerate() {
            match load_key(path, spec.algorithm) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push((format!("{name}[{i}]"), e)),
            }
        }
        keys
    };
    let active = load(&spec.keys, "keys");
    let published = load(&spec.published, "published");
    let Some(wire) = crate::names::name_to_wire(origin) else {
        problems.push(("keys".into(), format!("invalid zone origin {origin:?}")));
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ZoneSigner::new(
        wire,
        active,
        published,
        spec.signature_validity,
        spec.inception_offset,
        key_ttl,
    )
    .with_signatures_per_second(spec.signatures_per_second))
}

/// Loads a key file and checks its algorithm.
fn load_key(path: &Path, algorithm: Algorithm) -> Result<Key, String> {
    let key = Key::load(path).map_err(|e| e.to_string())?;
    if key.algorithm() != algorithm {
        return Err(format!(
            "{}: key algorithm {} is not the zone's algorithm {algorithm}",
            path.display(),
            key.algorithm()
        ));
    }
    Ok(key)
}

/// The DNSKEY TTL `meridian dnssec keygen` and `ds` print (the zone's SOA TTL is used when
/// serving).
pub const PRINT_TTL: u32 = 3600;

/// Writes a new key for `zone` to `out` (PEM PKCS#8, mode 0600, never overwriting) and returns
/// the DNSKEY and DS lines to print.
pub fn keygen(zone: &str, algorithm: Algorithm, out: &Path) -> Result<String, String> {
    let origin = fqdn(zone)?;
    let (key, der) = Key::generate(algorithm).map_err(|e| e.to_string())?;
    let pem = key::pem_encode(&der);
    write_new(out, pem.as_bytes()).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(format!(
        "; key {} written to {} (algorithm {algorithm}, tag {})\n{}\n; DS for the parent zone:\n{}\n",
        key.tag(),
        out.display(),
        key.tag(),
        key.dnskey_text(&origin, PRINT_TTL),
        key.ds_text(&origin, PRINT_TTL)
    ))
}

/// Returns the DNSKEY and DS lines of the key in `path` for `zone`.
pub fn describe(zone: &str, path: &Path) -> Result<String, String> {
    let origin = fqdn(zone)?;
    let key = Key::load(path).map_err(|e| e.to_string())?;
    Ok(format!(
        "{}\n{}\n",
        key.dnskey_text(&origin, PRINT_TTL),
        key.ds_text(&origin, PRINT_TTL)
    ))
}

fn fqdn(zone: &str) -> Result<String, String> {
    let origin = if zone.ends_with('.') {
        zone.to_ascii_lowercase()
    } else {
        format!("{}.", zone.to_ascii_lowercase())
    };
    crate::names::name_to_wire(&origin)
        .map(|_| origin)
        .ok_or_else(|| format!("invalid zone name {zone:?}"))
}

fn write_new(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(data)
}
