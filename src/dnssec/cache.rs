//! The signature cache and the signing budget, one of each per thread (no lock, no sharing:
//! the answer path never waits).
//!
//! Signatures are keyed by the key's identity and the bytes they cover (RFC 4034 §3.1.8.1:
//! the RRSIG RDATA without the signature, then the canonical RRset), so an RRset with the same
//! records, TTL and validity window gets the same signature whichever client asked: the
//! per-client choice of a region repeats across many clients. The cache is bounded: when full it
//! is emptied (a flood of distinct RRsets cannot grow it, and hot RRsets come back on their next
//! query). Signatures not found are made within a budget: a token bucket per thread and zone
//! of the zone's `dnssec.signatures_per_second` ([`Budget`]), so that a flood of random names
//! (whose denials are never cached) cannot take all the CPU, nor one zone's flood the
//! signatures of another; over budget the caller answers SERVFAIL. The signatures made and
//! refused are counted process-wide ([`counts`]) for `meridian_dnssec_signatures_total` and
//! `meridian_dnssec_budget_exhausted_total`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::key::{Key, KeyError};

/// Signatures kept per thread; when full the cache is emptied.
pub const MAX_SIGNATURES: usize = 50_000;

/// Zones whose budget a thread keeps; when more, the buckets start again full (a reload that
/// removed zones leaves theirs behind).
const MAX_BUCKETS: usize = 4_096;

/// New signatures made, every thread together.
static SIGNED: AtomicU64 = AtomicU64::new(0);
/// Signatures refused for a spent budget, every thread together.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Returns (signatures made, signatures refused because the budget was spent) since the
/// process started, every thread and zone together.
pub fn counts() -> (u64, u64) {
    (
        SIGNED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    )
}

/// A zone's signing budget: whose bucket (the zone origin, lowercase wire form: a reload keeps
/// the bucket) and its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The zone origin, lowercase wire form.
    pub zone: Vec<u8>,
    /// New signatures per second per thread, and the burst.
    pub per_second: u32,
}

/// Why no signature was given.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The thread's signing budget is spent for now.
    #[error("signing budget exhausted")]
    OverBudget,
    /// The key failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A record of the answer could not be put in canonical form.
    #[error("a record cannot be encoded for signing")]
    Encode,
}

struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, per_second: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(per_second.max(1));
        match self.last {
            Some(last) => {
                let refill = now.duration_since(last).as_secs_f64() * rate;
                self.tokens = (self.tokens + refill).min(rate);
            }
            None => self.tokens = rate,
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Vec<u8>, [u8; 64]>,
    scratch: Vec<u8>,
    hits: u64,
    signed: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static BUCKETS: RefCell<HashMap<Vec<u8>, Bucket>> = RefCell::new(HashMap::new());
}

/// Returns the signature by `key` of `tbs` (the to-be-signed bytes), from the cache when it is
/// there; a new one (within `budget`) is cached when `cacheable`.
pub fn signature(
    key: &Key,
    tbs: &[u8],
    cacheable: bool,
    budget: &Budget,
) -> Result<[u8; 64], SignError> {
    CACHE.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            // Re-entered (cannot happen: nothing here calls back): sign uncached.
            return sign_new(key, tbs, budget);
        };
        let c = &mut *c;
        c.scratch.clear();
        c.scratch.extend(key.id().to_be_bytes());
        c.scratch.extend_from_slice(tbs);
        if let Some(sig) = c.entries.get(&c.scratch) {
            c.hits += 1;
            return Ok(*sig);
        }
        let sig = sign_new(key, tbs, budget)?;
        c.signed += 1;
        if cacheable {
            if c.entries.len() >= MAX_SIGNATURES {
                c.entries.clear();
            }
            c.entries.insert(c.scratch.clone(), sig);
        }
        Ok(sig)
    })
}

fn sign_new(key: &Key, tbs: &[u8], budget: &Budget) -> Result<[u8; 64], SignError> {
    let allowed = BUCKETS.with(|b| {
        let Ok(mut buckets) = b.try_borrow_mut() else {
            return false;
        };
        if !buckets.contains_key(&budget.zone) && buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
        buckets
            .entry(budget.zone.clone())
            .or_insert(Bucket {
                tokens: 0.0,
                last: None,
            })
            .take(budget.per_second)
    });
    if !allowed {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        return Err(SignError::OverBudget);
    }
    SIGNED.fetch_add(1, Ordering::Relaxed);
    Ok(key.sign(tbs)?)
}

/// Returns this thread's (cache hits, signatures made, entries cached): for tests and benches.
pub fn stats() -> (u64, u64, usize) {
    CACHE.with(|c| {
        let c = c.borrow();
        (c.hits, c.signed, c.entries.len())
    })
}
