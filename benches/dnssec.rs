//! Benchmarks of DNSSEC online signing (issue 14): raw signatures per second for each
//! algorithm (what a cache miss costs), and an A RRset signed through the per-thread signature
//! cache (what a warm cache costs per answer).
//!
//! Run with `cargo bench --bench dnssec`. Signatures per second per core = 1 / the median time
//! of `sign` (the benches run on one thread).

use std::time::Duration;

use divan::{Bencher, black_box};
use meridian::dnssec::{Algorithm, Key, ZoneSigner};

fn main() {
    divan::main();
}

/// The to-be-signed bytes of a typical answer: an RRSIG prefix and one A record.
const TBS: &[u8] = b"\x00\x01\x0d\x03\x00\x00\x00\x1e\x6a\x00\x00\x00\x69\x00\x00\x00\x60\x7f\x07example\x03net\x00\x03api\x07example\x03net\x00\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\xc0\x00\x02\x01";

#[divan::bench(args = [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519])]
fn sign(bencher: Bencher<'_, '_>, algorithm: Algorithm) {
    let (key, _) = Key::generate(algorithm).expect("key");
    bencher.bench(|| key.sign(black_box(TBS)).expect("signature"));
}

#[divan::bench(args = [Algorithm::EcdsaP256Sha256, Algorithm::Ed25519])]
fn rrsig_cached(bencher: Bencher<'_, '_>, algorithm: Algorithm) {
    let (key, _) = Key::generate(algorithm).expect("key");
    let signer = ZoneSigner::new(
        b"\x07example\x03net\x00".to_vec(),
        vec![key],
        vec![],
        Duration::from_secs(14 * 86_400),
        Duration::from_secs(3_600),
        3_600,
    );
    let owner = b"\x03api\x07example\x03net\x00";
    let now = 1_800_000_000;
    let mut rdatas = vec![vec![192, 0, 2, 1]];
    // Warm the cache.
    signer
        .rrsigs(owner, None, 1, 30, &mut rdatas, now, true)
        .expect("rrsig");
    bencher.bench_local(|| {
        signer
            .rrsigs(black_box(owner), None, 1, 30, &mut rdatas, now, true)
            .expect("rrsig")
    });
}
