//! One zone's signer: its keys, validity windows, and the RRSIG, DNSKEY, CDS, CDNSKEY and NSEC
//! RDATA it makes. Works on wire bytes (lowercased owner names, canonical RDATA) handed in by
//! the reply builder, so that what is signed is exactly what goes on the wire.

use std::time::Duration;

use super::cache::{self, Budget, SignError};
use super::key::Key;

pub use crate::config::{DEFAULT_INCEPTION_OFFSET, DEFAULT_SIGNATURE_VALIDITY};

/// RR type numbers used here.
pub mod rtype {
    /// NS.
    pub const NS: u16 = 2;
    /// SOA.
    pub const SOA: u16 = 6;
    /// DS.
    pub const DS: u16 = 43;
    /// RRSIG.
    pub const RRSIG: u16 = 46;
    /// NSEC.
    pub const NSEC: u16 = 47;
    /// DNSKEY.
    pub const DNSKEY: u16 = 48;
    /// CDS.
    pub const CDS: u16 = 59;
    /// CDNSKEY.
    pub const CDNSKEY: u16 = 60;
    /// NXNAME, the compact-denial marker type (RFC 9824 §3.1).
    pub const NXNAME: u16 = 128;
}

/// The keys and timing of one signed zone.
#[derive(Debug)]
pub struct ZoneSigner {
    /// The zone origin, lowercase wire form (the signer name of every RRSIG).
    origin: Vec<u8>,
    /// Keys that sign (and are published, and listed in CDS/CDNSKEY).
    active: Vec<Key>,
    /// Keys only published in the DNSKEY RRset (before they become active, or after).
    published: Vec<Key>,
    /// Signature validity, seconds.
    validity: u32,
    /// Inception offset, seconds.
    offset: u32,
    /// TTL of the DNSKEY, CDS and CDNSKEY RRsets.
    key_ttl: u32,
    /// The signing budget of the zone.
    budget: Budget,
}

impl ZoneSigner {
    /// Returns a signer for the zone `origin` (lowercase wire form).
    pub fn new(
        origin: Vec<u8>,
        active: Vec<Key>,
        published: Vec<Key>,
        validity: Duration,
        offset: Duration,
        key_ttl: u32,
    ) -> ZoneSigner {
        let budget = Budget {
            zone: origin.clone(),
            per_second: crate::config::DEFAULT_SIGNATURES_PER_SECOND,
        };
        ZoneSigner {
            budget,
            origin,
            active,
            published,
            validity: validity.as_secs().min(u64::from(u32::MAX / 2)) as u32,
            offset: offset.as_secs().min(u64::from(u32::MAX / 2)) as u32,
            key_ttl,
        }
    }

    /// Returns the signer with a signing budget of `per_second` new signatures per second per
    /// thread (default [`crate::config::DEFAULT_SIGNATURES_PER_SECOND`]).
    pub fn with_signatures_per_second(mut self, per_second: u32) -> ZoneSigner {
        self.budget.per_second = per_second.max(1);
        self
    }

    /// Returns the zone origin in lowercase wire form.
    pub fn origin(&self) -> &[u8] {
        &self.origin
    }

    /// Returns the active keys.
    pub fn active(&self) -> &[Key] {
        &self.active
    }

    /// Returns the TTL of the DNSKEY, CDS and CDNSKEY RRsets.
    pub fn key_ttl(&self) -> u32 {
        self.key_ttl
    }

    /// Returns the DNSKEY RDATAs: active keys, then published-only ones.
    pub fn dnskey_rdatas(&self) -> Vec<Vec<u8>> {
        (self.active.iter().chain(&self.published))
            .map(Key::dnskey_rdata)
            .collect()
    }

    /// Returns the CDNSKEY RDATAs (RFC 7344): the active keys, what the parent should trust.
    pub fn cdnskey_rdatas(&self) -> Vec<Vec<u8>> {
        self.active.iter().map(Key::dnskey_rdata).collect()
    }

    /// Returns the CDS RDATAs (RFC 7344, SHA-256): the active keys.
    pub fn cds_rdatas(&self) -> Vec<Vec<u8>> {
        self.active
            .iter()
            .map(|k| k.ds_rdata(&self.origin))
            .collect()
    }

    /// Returns the (inception, expiration) of signatures made at `now` (seconds since the
    /// epoch). Both are aligned to a quarter of the validity, so that every signature made in
    /// the same quarter is identical (and cacheable) and stays valid for at least three
    /// quarters of the validity after it was made.
    pub fn window(&self, now: u64) -> (u32, u32) {
        let (start, _) = self.window_bounds(now);
        let inception = start.saturating_sub(u64::from(self.offset));
        let expiration = start + u64::from(self.validity);
        // RFC 4034 §3.1.5: serial number arithmetic modulo 2^32.
        (inception as u32, expiration as u32)
    }

    /// Returns the start and end (seconds since the epoch) of the window `now` falls in: every
    /// signature made in it is the same, and from its end on new ones are made.
    pub fn window_bounds(&self, now: u64) -> (u64, u64) {
        let step = u64::from((self.validity / 4).max(1));
        let start = now - now % step;
        (start, start + step)
    }

    /// Returns one RRSIG RDATA per active key for the RRset at `owner` (lowercase wire form;
    /// for a wildcard match, the query name), of type `rtype`, TTL `ttl` and RDATAs `rdatas`
    /// (canonical form: names lowercased, uncompressed; sorted here). `wildcard` is the label
    /// count of the wildcard that was matched (RFC 4034 §3.1.3), if any. New signatures are
    /// cached when `cacheable`.
    // The RRset's parts are passed apart so that callers need not build a struct per RRset.
    #[allow(clippy::too_many_arguments)]
    pub fn rrsigs(
        &self,
        owner: &[u8],
        wildcard: Option<u8>,
        rtype: u16,
        ttl: u32,
        rdatas: &mut [Vec<u8>],
        now: u64,
        cacheable: bool,
    ) -> Result<Vec<Vec<u8>>, SignError> {
        // RFC 4034 §6.3: RRs in canonical order (their RDATA as left-justified octet strings).
        rdatas.sort_unstable();
        let owner_labels = labels(owner);
        let labels = wildcard.unwrap_or(owner_labels);
        let (inception, expiration) = self.window(now);
        let mut out = Vec::with_capacity(self.active.len());
        let mut tbs = Vec::with_capacity(128);
        for key in &self.active {
            tbs.clear();
            // RRSIG RDATA without the signature (RFC 4034 §3.1.8.1).
            tbs.extend(rtype.to_be_bytes());
            tbs.push(key.algorithm().number());
            tbs.push(labels);
            tbs.extend(ttl.to_be_bytes());
            tbs.extend(expiration.to_be_bytes());
            tbs.extend(inception.to_be_bytes());
            tbs.extend(key.tag().to_be_bytes());
            tbs.extend_from_slice(&self.origin);
            let prefix = tbs.len();
            for rdata in rdatas.iter() {
                // RFC 4035 §5.3.2: a wildcard-expanded owner is signed as "*." + its last
                // `labels` labels.
                if labels < owner_labels {
                    tbs.extend([1, b'*']);
                    tbs.extend_from_slice(suffix(owner, labels));
                } else {
                    tbs.extend_from_slice(owner);
                }
                tbs.extend(rtype.to_be_bytes());
                tbs.extend(1u16.to_be_bytes()); // class IN
                tbs.extend(ttl.to_be_bytes());
                tbs.extend((rdata.len() as u16).to_be_bytes());
                tbs.extend_from_slice(rdata);
            }
            let sig = cache::signature(key, &tbs, cacheable, &self.budget)?;
            let mut rrsig = Vec::with_capacity(prefix + 64);
            rrsig.extend_from_slice(&tbs[..prefix]);
            rrsig.extend_from_slice(&sig);
            out.push(rrsig);
        }
        Ok(out)
    }
}

/// Returns the label count of a wire-form name (the root not counted, RFC 4034 §3.1.3), not
/// counting a leading `*`.
pub fn labels(wire: &[u8]) -> u8 {
    let mut n = 0u8;
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 {
            break;
        }
        if !(i == 0 && len == 1 && wire.get(1) == Some(&b'*')) {
            n = n.saturating_add(1);
        }
        i += 1 + usize::from(len);
    }
    n
}

/// Returns the last `keep` labels of a wire-form name (with the root).
pub fn suffix(wire: &[u8], keep: u8) -> &[u8] {
    let mut starts = Vec::with_capacity(8);
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 {
            break;
        }
        starts.push(i);
        i += 1 + usize::from(len);
    }
    let skip = starts.len().saturating_sub(usize::from(keep));
    starts
        .get(skip)
        .map_or(&wire[wire.len().saturating_sub(1)..], |&s| &wire[s..])
}

/// Returns the NSEC RDATA (RFC 4034 §4.1): `next` (wire form) and the type bitmap of `types`.
pub fn nsec_rdata(next: &[u8], types: &[u16]) -> Vec<u8> {
    let mut types = types.to_vec();
    types.sort_unstable();
    types.dedup();
    let mut out = next.to_vec();
    let mut i = 0;
    while i < types.len() {
        let window = (types[i] >> 8) as u8;
        let mut bitmap = [0u8; 32];
        let mut len = 0;
        while i < types.len() && (types[i] >> 8) as u8 == window {
            let low = (types[i] & 0xFF) as usize;
            bitmap[low / 8] |= 0x80 >> (low % 8);
            len = len.max(low / 8 + 1);
            i += 1;
        }
        out.push(window);
        out.push(len as u8);
        out.extend_from_slice(&bitmap[..len]);
    }
    out
}

/// Returns `\000.name` (wire form): the next name of a compact-denial NSEC, the first name
/// after `name` in canonical order (RFC 9824 §3.1, RFC 4470 §2). `None` when the result would
/// be longer than 255 octets.
pub fn next_after(name: &[u8]) -> Option<Vec<u8>> {
    if name.len() + 2 > 255 {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 2);
    out.extend([1, 0]);
    out.extend_from_slice(name);
    Some(out)
}

/// Returns a name just before `name` in canonical order, a sibling below the same parent
/// (RFC 4471 §3.1.2, shortened): its first label with the last octet decremented and an
/// octet 0xFF appended (so that no plausible real name, nor any descendant of the sibling it
/// would otherwise be, falls between). `None` when the first label ends in a zero octet.
pub fn name_before(name: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(*name.first()?);
    let last = *name.get(len)?;
    if len == 0 || last == 0 {
        return None;
    }
    let mut dec = last - 1;
    if dec.is_ascii_uppercase() {
        // Canonical order compares lowercased labels: go below the letters.
        dec = b'A' - 1;
    }
    let mut out = Vec::with_capacity(name.len() + 1);
    out.extend_from_slice(&name[..=len]);
    out[len] = dec;
    if len < 63 {
        out.push(0xFF);
        out[0] = (len + 1) as u8;
    }
    out.extend_from_slice(&name[len + 1..]);
    (out.len() <= 255).then_some(out)
}

/// Returns a name just after `name` and all its descendants in canonical order, a sibling
/// below the same parent (RFC 4471 §3.1.1): its first label with a zero octet appended (or,
/// for a 63-octet label, its last octet incremented). `None` when that cannot be done.
pub fn sibling_after(name: &[u8]) -> Option<Vec<u8>> {
    let len = usize::from(*name.first()?);
    if len == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(name.len() + 1);
    out.extend_from_slice(&name[..=len]);
    if len < 63 {
        out.push(0);
        out[0] = (len + 1) as u8;
    } else {
        let mut inc = out[len].checked_add(1)?;
        if inc.is_ascii_uppercase() {
            inc = b'Z' + 1;
        }
        out[len] = inc;
    }
    out.extend_from_slice(&name[len + 1..]);
    (out.len() <= 255).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4034_label_count_ignores_root_and_leading_wildcard() {
        assert_eq!(labels(b"\x03www\x07example\x03net\x00"), 3);
        assert_eq!(labels(b"\x01*\x07example\x03net\x00"), 2);
        assert_eq!(labels(b"\x00"), 0);
        assert_eq!(
            suffix(b"\x01a\x04user\x03net\x00", 2),
            b"\x04user\x03net\x00"
        );
        assert_eq!(suffix(b"\x01a\x04user\x03net\x00", 0), b"\x00");
    }

    #[test]
    fn rfc4034_4_1_2_type_bitmap_of_the_rfc_example() {
        // RFC 4034 §4.3: A MX RRSIG NSEC TYPE1234.
        let rdata = nsec_rdata(b"\x00", &[1, 15, 46, 47, 1234]);
        let mut expected = vec![
            0, 0x00, 0x06, 0x40, 0x01, 0x00, 0x00, 0x00, 0x03, 0x04, 0x1b,
        ];
        expected.extend([0u8; 26]);
        expected.push(0x20);
        assert_eq!(rdata, expected);
    }

    #[test]
    fn names_before_and_after_are_siblings_just_around() {
        assert_eq!(name_before(b"\x03foo\x00").unwrap(), b"\x04fon\xff\x00");
        assert_eq!(
            name_before(b"\x01b\x01x\x00").unwrap(),
            b"\x02a\xff\x01x\x00"
        );
        assert_eq!(name_before(b"\x01[\x00").unwrap(), b"\x02@\xff\x00");
        assert!(name_before(b"\x02a\x00\x00").is_none());
        assert_eq!(
            sibling_after(b"\x03foo\x01x\x00").unwrap(),
            b"\x04foo\x00\x01x\x00"
        );
    }

    #[test]
    fn windows_are_aligned_and_leave_most_of_the_validity() {
        let s = ZoneSigner::new(
            b"\x00".to_vec(),
            vec![],
            vec![],
            DEFAULT_SIGNATURE_VALIDITY,
            DEFAULT_INCEPTION_OFFSET,
            3600,
        );
        let now = 1_800_000_000u64;
        let (i1, e1) = s.window(now);
        let (i2, e2) = s.window(now + 60);
        assert_eq!((i1, e1), (i2, e2));
        assert!(u64::from(i1) <= now - 3600);
        assert!(u64::from(e1) >= now + 14 * 86_400 * 3 / 4);
    }
}
