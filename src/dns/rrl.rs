//! Response rate limiting on UDP (`[rate_limit]`): a token bucket per client network, shared
//! by every UDP thread.
//!
//! A UDP source address can be forged, so an open authoritative server can be made to send
//! its answers to a victim. Limiting the responses per client network (a /24 or /56 by
//! default) caps what anyone can aim at one target, as BIND's RRL does. A limited response is
//! dropped, except every `slip`-th one, which is sent truncated: a real client behind a busy
//! network still gets an answer that tells it to retry over TCP, where nothing is limited
//! (a TCP handshake cannot be forged).
//!
//! One [`Limiter`] serves all UDP sockets of the process (issue 9): the kernel spreads a
//! client's source ports over the SO_REUSEPORT sockets, so per-socket buckets would give a
//! client on many ports up to `udp_workers` times the rate. The table is a fixed array of
//! atomics, one per slot, indexed by a keyed hash of the client network; each slot holds the
//! bucket as a GCRA "theoretical arrival time" (the time at which the bucket would be full
//! again), so a check is one hash, one load and one compare-and-swap: no lock, and threads
//! only meet on the cache line of a network both are answering. Two networks that hash to the
//! same slot share one bucket; with [`SLOTS`] slots that is rare, and it errs on the side of
//! limiting. A flood from random sources cannot grow the table: it has a fixed size.
//!
//! The caller passes the time (`now`), so the limiter is tested without a clock.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::RateLimit;

/// Slots in the shared table (a power of two): 2 MiB of atomics, allocated when rate limiting
/// is first used.
pub(crate) const SLOTS: usize = 1 << 18;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: send it.
    Send,
    /// Over the rate, but sent truncated so that a real client retries over TCP.
    Slip,
    /// Over the rate: drop it.
    Drop,
}

/// The token buckets of every UDP thread, one per client network (see the module docs).
#[derive(Debug)]
pub(crate) struct Limiter {
    /// Time zero of the slots' nanosecond clock.
    epoch: Instant,
    /// Keyed hash (random per process), so that nobody can aim at another network's slot.
    hasher: RandomState,
    /// Per slot: the bucket's theoretical arrival time in nanoseconds since `epoch` (0: full).
    slots: OnceLock<Box<[AtomicU64]>>,
    /// Limited responses so far, for `slip`.
    limited: AtomicU64,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::new()
    }
}

impl Limiter {
    /// Returns an empty limiter; the table is allocated on the first check.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            hasher: RandomState::new(),
            slots: OnceLock::new(),
            limited: AtomicU64::new(0),
        }
    }

    /// Decides about one response to `client` at `now` under `config`. An `exempt` client
    /// (one that proved it is not spoofed, e.g. with a valid DNS cookie) is always sent to
    /// and does not spend tokens.
    ///
    /// GCRA: each response moves the slot's arrival time one interval (1 / rate) past
    /// `max(now, arrival)`; a response is within the rate while that stays no more than the
    /// burst (rate intervals, i.e. one second) ahead of `now`.
    pub(crate) fn check(
        &self,
        config: &RateLimit,
        client: IpAddr,
        now: Instant,
        exempt: bool,
    ) -> Verdict {
        if exempt {
            return Verdict::Send;
        }
        let slots = self
            .slots
            .get_or_init(|| (0..SLOTS).map(|_| AtomicU64::new(0)).collect());
        let key = network(client, config.ipv4_prefix, config.ipv6_prefix);
        let slot = &slots[(self.hasher.hash_one(key) as usize) & (SLOTS - 1)];
        let rate = u64::from(config.responses_per_second.max(1));
        let interval = 1_000_000_000 / rate;
        // The burst is the rate: `rate` responses in one go from a full bucket.
        let burst = interval * rate;
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let admitted = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |arrival| {
            let next = arrival.max(now) + interval;
            (next - now <= burst).then_some(next)
        });
        if admitted.is_ok() {
            return Verdict::Send;
        }
        let limited = self.limited.fetch_add(1, Ordering::Relaxed) + 1;
        match config.slip {
            0 => Verdict::Drop,
            slip if limited.is_multiple_of(u64::from(slip)) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }
}

/// Returns the key of the client's network: family and the address masked to `ipv4_prefix`
/// or `ipv6_prefix` bits (an IPv4-mapped IPv6 address counts as IPv4).
pub(crate) fn network(client: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> (bool, u128) {
    match client.to_canonical() {
        IpAddr::V4(a) => {
            let p = u32::from(ipv4_prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            (false, u128::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let p = u32::from(ipv6_prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            (true, u128::from(a) & mask)
        }
    }
}

/// Rewrites the response in `out` as a truncated one: the header with TC set, the question
/// and the OPT (if any), no other records. Returns false if `out` is not a response it can
/// walk.
pub(crate) fn truncate(out: &mut Vec<u8>) -> bool {
    super::response::truncate(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A limiter with its settings, checked as the UDP threads do.
    struct Fixture(Limiter, RateLimit);

    impl Fixture {
        fn check(&self, client: IpAddr, now: Instant) -> Verdict {
            self.0.check(&self.1, client, now, false)
        }
    }

    fn limiter(rate: u32, slip: u32) -> Fixture {
        Fixture(
            Limiter::new(),
            RateLimit {
                responses_per_second: rate,
                slip,
                ipv4_prefix: 24,
                ipv6_prefix: 56,
            },
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_of_the_rate_passes_then_responses_are_limited() {
        let l = limiter(5, 0);
        let t = Instant::now();
        let verdicts: Vec<_> = (0..8).map(|_| l.check(ip("192.0.2.1"), t)).collect();
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(verdicts[5..], [Verdict::Drop; 3]);
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let l = limiter(10, 0);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Send);
        }
        assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Drop);
        // 100 ms at 10/s is one token.
        let later = t + Duration::from_millis(100);
        assert_eq!(l.check(ip("192.0.2.1"), later), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.1"), later), Verdict::Drop);
        // A long pause refills to the burst, not beyond.
        let much_later = t + Duration::from_secs(60);
        let sent = (0..20)
            .filter(|_| l.check(ip("192.0.2.1"), much_later) == Verdict::Send)
            .count();
        assert_eq!(sent, 10);
    }

    #[test]
    fn every_slip_th_limited_response_is_sent_truncated() {
        let l = limiter(1, 2);
        let t = Instant::now();
        assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Send);
        let v: Vec<_> = (0..6).map(|_| l.check(ip("192.0.2.1"), t)).collect();
        assert_eq!(
            v,
            [
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip,
                Verdict::Drop,
                Verdict::Slip
            ]
        );
    }

    #[test]
    fn clients_are_grouped_by_network_and_networks_are_independent() {
        let l = limiter(2, 0);
        let t = Instant::now();
        assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.200"), t), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.77"), t), Verdict::Drop, "same /24");
        assert_eq!(l.check(ip("198.51.100.1"), t), Verdict::Send, "another /24");
        assert_eq!(
            l.check(ip("::ffff:192.0.2.9"), t),
            Verdict::Drop,
            "IPv4-mapped is the same /24"
        );
        assert_eq!(l.check(ip("2001:db8:0:1::1"), t), Verdict::Send);
        assert_eq!(l.check(ip("2001:db8:0:2::1"), t), Verdict::Send);
        assert_eq!(l.check(ip("2001:db8:0:3::1"), t), Verdict::Drop, "same /56");
        assert_eq!(
            l.check(ip("2001:db8:0:100::1"), t),
            Verdict::Send,
            "another /56"
        );
    }

    #[test]
    fn threads_share_one_bucket_per_network() {
        // Issue 9: four threads answering one network together send the rate, not 4x it.
        let l = std::sync::Arc::new(limiter(100, 0));
        let t = Instant::now();
        let sent: usize = (0..4)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let client = IpAddr::from([192, 0, 2, 10 + i]);
                    (0..100)
                        .filter(|_| l.check(client, t) == Verdict::Send)
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(sent, 100);
    }

    #[test]
    fn an_exempt_client_is_always_sent_to_and_spends_nothing() {
        let l = limiter(1, 0);
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.0.check(&l.1, ip("192.0.2.1"), t, true), Verdict::Send);
        }
        assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Send);
        assert_eq!(l.check(ip("192.0.2.1"), t), Verdict::Drop);
    }

    #[test]
    fn many_networks_each_get_their_own_rate() {
        // 10,000 networks (far fewer than SLOTS): nearly all have a bucket of their own.
        let l = limiter(2, 0);
        let t = Instant::now();
        let sent = (0..10_000u32)
            .flat_map(|i| [i, i])
            .filter(|i| l.check(IpAddr::from((i << 8).to_be_bytes()), t) == Verdict::Send)
            .count();
        assert!(sent > 19_000, "{sent} of 20000 sent");
    }

    #[test]
    fn truncate_keeps_header_and_question_and_sets_tc() {
        // ID, flags (QR AA), 1 question, 1 answer, 0, 1 additional; question a.b. A IN; junk.
        let mut r = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 1];
        r.extend([1, b'a', 1, b'b', 0, 0, 1, 0, 1]);
        r.extend([0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 0, 2, 1]);
        assert!(truncate(&mut r));
        assert_eq!(r.len(), 12 + 9);
        assert_eq!(r[2] & 0x02, 0x02);
        assert_eq!(&r[6..12], &[0; 6]);
        assert!(!truncate(&mut vec![0; 5]));
    }
}
