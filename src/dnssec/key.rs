//! Signing keys: PKCS#8 files (PEM), their DNSKEY, DS, CDS and CDNSKEY records, and signing.
//!
//! Uses `ring` directly (already in the tree through rustls) rather than hickory's DNSSEC
//! types: the answer path signs bytes it builds itself ([`super::signer`]), so a key only has to
//! sign a message and describe itself. Algorithms: ECDSA P-256 with SHA-256 (13, the default)
//! and Ed25519 (15), the two RFC 8624 recommends for signing.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

pub use crate::config::Algorithm;

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not a PEM "PRIVATE KEY" (PKCS#8).
    #[error("{0}: not a PEM PKCS#8 private key (-----BEGIN PRIVATE KEY-----)")]
    Pem(String),
    /// The PKCS#8 document is neither an ECDSA P-256 nor an Ed25519 key.
    #[error("{0}: not an ECDSA P-256 or Ed25519 PKCS#8 key")]
    Pkcs8(String),
    /// The key could not be generated or could not sign.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One signing key and its public DNSKEY data.
pub struct Key {
    algorithm: Algorithm,
    pair: Pair,
    /// The DNSKEY public key field (P-256: X | Y, 64 bytes; Ed25519: 32 bytes).
    public: Vec<u8>,
    /// The DNSKEY flags: 257 (zone key, secure entry point): one combined signing key.
    flags: u16,
    /// Key tag (RFC 4034 Appendix B).
    tag: u16,
    /// A random identity for the signature cache (two keys may share a tag).
    id: u64,
    rng: SystemRandom,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print private material.
        f.debug_struct("Key")
            .field("algorithm", &self.algorithm)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// DNSKEY flags of a combined signing key: Zone Key and Secure Entry Point (RFC 4034 §2.1.1).
pub const FLAGS_CSK: u16 = 257;

impl Key {
    /// Generates a new key; returns it and its PKCS#8 document.
    pub fn generate(algorithm: Algorithm) -> Result<(Key, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let der = match algorithm {
            Algorithm::EcdsaP256Sha256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Crypto("cannot generate an ECDSA key"))?
            }
            Algorithm::Ed25519 => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Crypto("cannot generate an Ed25519 key"))?,
        };
        let der = der.as_ref().to_vec();
        let key = Key::from_pkcs8(&der, "generated key")?;
        Ok((key, der))
    }

    /// Reads a key from a PKCS#8 document; `what` names it in errors.
    pub fn from_pkcs8(der: &[u8], what: &str) -> Result<Key, KeyError> {
        let rng = SystemRandom::new();
        let (algorithm, pair, public) = if let Ok(p) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            // ring gives the uncompressed point (0x04 | X | Y); DNSKEY carries X | Y (RFC 6605 §4).
            let public = p
                .public_key()
                .as_ref()
                .get(1..)
                .unwrap_or_default()
                .to_vec();
            (Algorithm::EcdsaP256Sha256, Pair::Ecdsa(p), public)
        } else if let Ok(p) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let public = p.public_key().as_ref().to_vec();
            (Algorithm::Ed25519, Pair::Ed25519(p), public)
        } else {
            return Err(KeyError::Pkcs8(what.to_string()));
        };
        let mut key = Key {
            algorithm,
            pair,
            public,
            flags: FLAGS_CSK,
            tag: 0,
            id: rand::random(),
            rng,
        };
        key.tag = key_tag(&key.dnskey_rdata());
        Ok(key)
    }

    /// Reads a key from a PEM file.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let what = path.display().to_string();
        let der = pem_decode(&text).ok_or_else(|| KeyError::Pem(what.clone()))?;
        Key::from_pkcs8(&der, &what)
    }

    /// Returns the algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Returns the key tag.
    pub fn tag(&self) -> u16 {
        self.tag
    }

    /// Returns the key's identity in signature caches.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Returns the DNSKEY RDATA: flags, protocol 3, algorithm, public key (RFC 4034 §2.1).
    pub fn dnskey_rdata(&self) -> Vec<u8> {
        let mut r = Vec::with_capacity(4 + self.public.len());
        r.extend(self.flags.to_be_bytes());
        r.push(3);
        r.push(self.algorithm.number());
        r.extend_from_slice(&self.public);
        r
    }

    /// Returns the DS RDATA with a SHA-256 digest (RFC 4509) for the key at `owner` (lowercase
    /// wire form).
    pub fn ds_rdata(&self, owner: &[u8]) -> Vec<u8> {
        let mut input = owner.to_vec();
        input.extend(self.dnskey_rdata());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut r = Vec::with_capacity(4 + 32);
        r.extend(self.tag.to_be_bytes());
        r.push(self.algorithm.number());
        r.push(2); // SHA-256
        r.extend_from_slice(digest.as_ref());
        r
    }

    /// Returns the DNSKEY in presentation format, owned by `origin` (`example.net.`).
    pub fn dnskey_text(&self, origin: &str, ttl: u32) -> String {
        format!(
            "{origin} {ttl} IN DNSKEY {} 3 {} {}",
            self.flags,
            self.algorithm.number(),
            base64::engine::general_purpose::STANDARD.encode(&self.public)
        )
    }

    /// Returns the DS (SHA-256) in presentation format, owned by `origin` (`example.net.`).
    pub fn ds_text(&self, origin: &str, ttl: u32) -> String {
        let wire = crate::names::name_to_wire(origin).unwrap_or_default();
        let ds = self.ds_rdata(&wire);
        let digest: String = ds[4..].iter().map(|b| format!("{b:02X}")).collect();
        format!(
            "{origin} {ttl} IN DS {} {} 2 {digest}",
            self.tag,
            self.algorithm.number()
        )
    }

    /// Signs `message`; returns the 64-byte signature (both algorithms give 64 bytes: P-256 as
    /// r | s, RFC 6605 §4; Ed25519, RFC 8080 §4).
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        let mut out = [0u8; 64];
        match &self.pair {
            Pair::Ecdsa(p) => {
                let sig = p
                    .sign(&self.rng, message)
                    .map_err(|_| KeyError::Crypto("ECDSA signing failed"))?;
                out.copy_from_slice(sig.as_ref().get(..64).ok_or(KeyError::Crypto("short"))?);
            }
            Pair::Ed25519(p) => out.copy_from_slice(p.sign(message).as_ref()),
        }
        Ok(out)
    }
}

/// Returns the key tag of a DNSKEY RDATA (RFC 4034 Appendix B).
pub fn key_tag(rdata: &[u8]) -> u16 {
    let mut ac: u32 = 0;
    for (i, b) in rdata.iter().enumerate() {
        ac += if i & 1 == 1 {
            u32::from(*b)
        } else {
            u32::from(*b) << 8
        };
    }
    ac += (ac >> 16) & 0xFFFF;
    (ac & 0xFFFF) as u16
}

/// Encodes a PKCS#8 document as PEM ("PRIVATE KEY", 64-character lines, RFC 7468).
pub fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Decodes the first PEM "PRIVATE KEY" block of `text`.
pub fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN PRIVATE KEY-----")?;
    let body = &text[start + "-----BEGIN PRIVATE KEY-----".len()..];
    let end = body.find("-----END PRIVATE KEY-----")?;
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4034_appendix_b_key_tag_of_a_known_dnskey() {
        // The DNSKEY of RFC 4034 §5.4's example (example.com. DS 60485 5 1 ...).
        let public = base64::engine::general_purpose::STANDARD
            .decode(
                "AQOeiiR0GOMYkDshWoSKz9XzfwJr1AYtsmx3TGkJaNXVbfi/2pHm822aJ5iI9BMzNXxeYCmZDRD99WYwYqUSdjMmmAphXdvxegXd/M5+X7OrzKBaMbCVdFLUUh6DhweJBjEVv5f2wwjM9XzcnOf+EPbtG9DMBmADjFDc2w/rljwvFw==",
            )
            .unwrap();
        let mut rdata = vec![1, 0, 3, 5];
        rdata.extend(public);
        assert_eq!(key_tag(&rdata), 60485);
    }

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for alg in [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519] {
            let (key, der) = Key::generate(alg).unwrap();
            let again = Key::from_pkcs8(&pem_decode(&pem_encode(&der)).unwrap(), "k").unwrap();
            assert_eq!(again.algorithm(), alg);
            assert_eq!(again.dnskey_rdata(), key.dnskey_rdata());
            assert_eq!(key.sign(b"x").unwrap().len(), 64);
        }
    }
}
