//! Response rate limiting on UDP (`[rate_limit]`): a token bucket per client network.
//!
//! A UDP source address can be forged, so an open authoritative server can be made to send
//! its answers to a victim. Limiting the responses per client network (a /24 or /56 by
//! default) caps what anyone can aim at one target, as BIND's RRL does. A limited response is
//! dropped, except every `slip`-th one, which is sent truncated: a real client behind a busy
//! network still gets an answer that tells it to retry over TCP, where nothing is limited
//! (a TCP handshake cannot be forged).
//!
//! Each UDP thread keeps its own [`Limiter`] (no lock on the answer path), so with `W` sockets
//! a client spread over several source ports may get up to `W` times the configured rate.
//! The caller passes the time (`now`), so the limiter is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::RateLimit;

/// Client networks tracked per thread; past this, networks with full buckets are forgotten
/// (and if that is not enough, all), so a flood from random sources cannot grow the table
/// without bound.
pub const MAX_NETWORKS: usize = 65_536;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: send it.
    Send,
    /// Over the rate, but sent truncated so that a real client retries over TCP.
    Slip,
    /// Over the rate: drop it.
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The token buckets of one UDP thread.
#[derive(Debug)]
pub struct Limiter {
    config: RateLimit,
    buckets: HashMap<(bool, u128), Bucket>,
    limited: u64,
}

impl Limiter {
    /// Returns a limiter for `config`.
    pub fn new(config: RateLimit) -> Self {
        Self {
            config,
            buckets: HashMap::new(),
            limited: 0,
        }
    }

    /// Returns the settings in force.
    pub fn config(&self) -> RateLimit {
        self.config
    }

    /// Decides about one response to `client` at `now`.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Verdict {
        let rate = f64::from(self.config.responses_per_second);
        if self.buckets.len() >= MAX_NETWORKS {
            self.forget_idle(now, rate);
        }
        let bucket = self.buckets.entry(self.network(client)).or_insert(Bucket {
            tokens: rate,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        self.limited += 1;
        match self.config.slip {
            0 => Verdict::Drop,
            slip if self.limited.is_multiple_of(u64::from(slip)) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }

    /// Decides like [`Limiter::check`], except that a client that proved its address with a
    /// valid DNS server cookie (RFC 7873 §5.3, [`super::cookie::has_valid`]) is always sent
    /// its response and does not spend its network's tokens.
    pub fn check_client(
        &mut self,
        client: IpAddr,
        now: Instant,
        has_valid_cookie: bool,
    ) -> Verdict {
        if has_valid_cookie {
            return Verdict::Send;
        }
        self.check(client, now)
    }

    /// Returns the key of the client's network: family and the masked address.
    fn network(&self, client: IpAddr) -> (bool, u128) {
        match client.to_canonical() {
            IpAddr::V4(a) => {
                let p = u32::from(self.config.ipv4_prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                (false, u128::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let p = u32::from(self.config.ipv6_prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                (true, u128::from(a) & mask)
            }
        }
    }

    /// Forgets networks whose bucket has refilled (they are as good as new); if that frees
    /// nothing, forgets every network.
    fn forget_idle(&mut self, now: Instant, rate: f64) {
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < rate
        });
        if self.buckets.len() >= MAX_NETWORKS {
            self.buckets.clear();
        }
    }
}

/// Rewrites the response in `out` as a truncated one: the header with TC set, the question
/// and the OPT (if any), no other records. Returns false if `out` is not a response it can
/// walk.
pub fn truncate(out: &mut Vec<u8>) -> bool {
    super::response::truncate(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limiter(rate: u32, slip: u32) -> Limiter {
        Limiter::new(RateLimit {
            responses_per_second: rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_of_the_rate_passes_then_responses_are_limited() {
        let mut l = limiter(5, 0);
        let t = Instant::now();
        let verdicts: Vec<_> = (0..8).map(|_| l.check(ip("192.0.2.1"), t)).collect();
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(verdicts[5..], [Verdict::Drop; 3]);
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate() {
        let mut l = limiter(10, 0);
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
        let mut l = limiter(1, 2);
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
        let mut l = limiter(2, 0);
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
    fn the_table_is_bounded_under_a_flood_of_sources() {
        let mut l = limiter(1, 0);
        let t = Instant::now();
        for i in 0..(MAX_NETWORKS as u32 + 1000) {
            l.check(IpAddr::from((i << 8).to_be_bytes()), t);
        }
        assert!(l.buckets.len() <= MAX_NETWORKS);
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
