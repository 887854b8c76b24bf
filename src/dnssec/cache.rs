//! The signature cache and the signing budget, one of each per thread (no lock, no sharing:
//! the answer path never waits).
//!
//! Signatures are keyed by the key's identity and the bytes they cover (RFC 4034 §3.1.8.1:
//! the RRSIG RDATA without the signature, then the canonical RRset), so an RRset with the same
//! records, TTL and validity window gets the same signature whichever client asked: the
//! per-client choice of a region repeats across many clients. The cache is bounded: when full it
//! is emptied (a flood of distinct RRsets cannot grow it, and hot RRsets come back on their next
//! query). Signatures not found are made within a budget: a token bucket of
//! [`SIGNATURES_PER_SECOND`] per thread, so that a flood of random names (whose denials are
//! never cached) cannot take all the CPU; over budget the caller answers SERVFAIL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use super::key::{Key, KeyError};

/// Signatures kept per thread; when full the cache is emptied.
pub const MAX_SIGNATURES: usize = 50_000;

/// New signatures a thread may make per second (and in a burst): about a third of a core for
/// ECDSA P-256 on the bench machine, the rest left for answering.
pub const SIGNATURES_PER_SECOND: u32 = 8_000;

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

struct Budget {
    tokens: f64,
    last: Option<Instant>,
}

impl Budget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let rate = f64::from(SIGNATURES_PER_SECOND);
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
    static BUDGET: RefCell<Budget> = const { RefCell::new(Budget { tokens: 0.0, last: None }) };
}

/// Returns the signature by `key` of `tbs` (the to-be-signed bytes), from the cache when it is
/// there; a new one (within the budget) is cached when `cacheable`.
pub fn signature(key: &Key, tbs: &[u8], cacheable: bool) -> Result<[u8; 64], SignError> {
    CACHE.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            // Re-entered (cannot happen: nothing here calls back): sign uncached.
            return sign_new(key, tbs);
        };
        let c = &mut *c;
        c.scratch.clear();
        c.scratch.extend(key.id().to_be_bytes());
        c.scratch.extend_from_slice(tbs);
        if let Some(sig) = c.entries.get(&c.scratch) {
            c.hits += 1;
            return Ok(*sig);
        }
        let sig = sign_new(key, tbs)?;
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

fn sign_new(key: &Key, tbs: &[u8]) -> Result<[u8; 64], SignError> {
    let allowed = BUDGET.with(|b| b.try_borrow_mut().map(|mut b| b.take()).unwrap_or(false));
    if !allowed {
        return Err(SignError::OverBudget);
    }
    Ok(key.sign(tbs)?)
}

/// Returns this thread's (cache hits, signatures made, entries cached): for tests and benches.
pub fn stats() -> (u64, u64, usize) {
    CACHE.with(|c| {
        let c = c.borrow();
        (c.hits, c.signed, c.entries.len())
    })
}
