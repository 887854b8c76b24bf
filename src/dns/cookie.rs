//! DNS Cookies (RFC 7873) with interoperable server cookies (RFC 9018).
//!
//! A query with a client cookie gets that cookie back with a fresh server cookie: version 1,
//! three reserved octets, a timestamp (seconds, serial arithmetic) and SipHash-2-4 of client
//! cookie | version | reserved | timestamp | client address under a 16-octet secret. Every
//! instance that reads the same `server.cookie_secret_file` makes and accepts the same
//! cookies, so a resolver keeps its cookie across an anycast set; without that file each
//! process draws a random secret at start.
//!
//! A server cookie is *valid* when its hash matches under any configured secret and its
//! timestamp lies at most an hour in the past and five minutes in the future (RFC 9018
//! §4.3). A valid cookie proves that the client received an earlier answer at its address, so
//! it is exempt from response rate limiting ([`has_valid`], used by the UDP loop). An invalid
//! or stale one changes nothing else: the answer is sent as usual with a fresh cookie (RFC 7873
//! §5.2.3). BADCOOKIE is never sent: it would cost an honest client whose secret rolled over
//! a round trip and gains nothing, since no answer here is withheld from cookie-less clients.
//!
//! Not here: parsing the option ([`super::wire::Cookie`]) and writing it
//! ([`super::response::Opt`]).

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use siphasher::sip::SipHasher24;

use super::wire::{self, Cookie};
use crate::config::Config;

/// A server secret (RFC 9018 §4.4): 16 octets, the SipHash-2-4 key.
pub(crate) type Secret = [u8; 16];

/// The server cookie version made here (RFC 9018 §4.2).
const VERSION: u8 = 1;

/// How long a server cookie is valid after its timestamp, in seconds (RFC 9018 §4.3).
pub(crate) const MAX_AGE: u32 = 3600;

/// How far a server cookie's timestamp may lie in the future, in seconds: clock skew between
/// instances sharing a secret (RFC 9018 §4.3).
pub(crate) const MAX_SKEW: u32 = 300;

/// Length of the COOKIE option in a response: client cookie and server cookie.
pub(crate) const REPLY_LEN: usize = 24;

/// Returns the secrets in force: those of `config` (the first makes cookies, all are
/// accepted), or this process's random secret when none is configured.
pub(crate) fn secrets(config: &Config) -> &[Secret] {
    let configured = &config.server.cookie_secrets;
    if configured.is_empty() {
        std::slice::from_ref(random_secret())
    } else {
        configured
    }
}

/// Returns this process's random secret, drawn on first use.
fn random_secret() -> &'static Secret {
    static SECRET: OnceLock<Secret> = OnceLock::new();
    SECRET.get_or_init(rand::random)
}

/// Returns the current time as a cookie timestamp: seconds since the epoch, modulo 2^32.
///
/// On Linux this reads the coarse realtime clock (updated every tick, a few milliseconds): a
/// cookie needs seconds, and `SystemTime::now` cost 72 ns per call on the bench machine,
/// about a fifth of a whole cached answer.
pub(crate) fn now() -> u32 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            return ts.tv_sec as u32;
        }
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

/// Returns the hash of a server cookie: SipHash-2-4 of client cookie | version | reserved |
/// timestamp | client address, keyed with `secret` (RFC 9018 §4.4), in the byte order of the
/// reference implementation (the RFC's test vectors).
fn hash(secret: &Secret, client: &[u8; 8], head: &[u8], ip: IpAddr) -> [u8; 8] {
    // One contiguous input: the hasher's streaming of several short writes costs more.
    let mut input = [0u8; 32];
    input[..8].copy_from_slice(client);
    input[8..16].copy_from_slice(head.get(..8).unwrap_or(&[0; 8]));
    let len = match ip.to_canonical() {
        IpAddr::V4(a) => {
            input[16..20].copy_from_slice(&a.octets());
            20
        }
        IpAddr::V6(a) => {
            input[16..32].copy_from_slice(&a.octets());
            32
        }
    };
    let mut h = SipHasher24::new_with_key(secret);
    h.write(&input[..len]);
    h.finish().to_le_bytes()
}

/// Makes the server cookie for `client` (the client cookie) at address `ip`, time `now`.
pub(crate) fn server_cookie(secret: &Secret, client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
    let mut cookie = [0u8; 16];
    cookie[0] = VERSION;
    cookie[4..8].copy_from_slice(&now.to_be_bytes());
    let h = hash(secret, client, &cookie[..8], ip);
    cookie[8..].copy_from_slice(&h);
    cookie
}

/// Returns whether `server` is a server cookie we made for `client` at `ip`, still within its
/// lifetime at `now`. The reserved octets are hashed as received (RFC 9018 §4.2).
pub(crate) fn is_valid(
    secrets: &[Secret],
    client: &[u8; 8],
    server: &[u8],
    ip: IpAddr,
    now: u32,
) -> bool {
    if server.len() != 16 || server[0] != VERSION {
        return false;
    }
    let stamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    // Serial arithmetic (RFC 1982): the age may cross the 2^32 wrap.
    let age = now.wrapping_sub(stamp) as i32;
    if age > MAX_AGE as i32 || age < -(MAX_SKEW as i32) {
        return false;
    }
    // Every secret is tried in full so that the time taken says nothing about which matched.
    secrets.iter().fold(false, |ok, s| {
        let h = hash(s, client, &server[..8], ip);
        ok | bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &server[8..]))
    })
}

/// Returns the COOKIE option of a response to a query that carried `cookie`, from `ip`: the
/// client cookie and a server cookie made now with the first secret.
pub(crate) fn reply(cookie: &Cookie, ip: IpAddr, secrets: &[Secret], now: u32) -> [u8; REPLY_LEN] {
    let client = cookie.client();
    let mut out = [0u8; REPLY_LEN];
    out[..8].copy_from_slice(&client);
    if let Some(secret) = secrets.first() {
        out[8..].copy_from_slice(&server_cookie(secret, &client, ip, now));
    }
    out
}

/// Returns whether the query `msg` from `ip` carries a valid server cookie now; reads only the
/// OPT record, so that the rate limiter can ask without a full parse (and the clock only when
/// there is a server cookie to check).
pub(crate) fn has_valid(msg: &[u8], ip: IpAddr, secrets: &[Secret]) -> bool {
    wire::find_cookie(msg).is_some_and(|c| {
        c.server()
            .is_some_and(|s| is_valid(secrets, &c.client(), s, ip, now()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rfc9018_appendix_a_test_vectors() {
        // A.1: learning a new server cookie.
        let secret = hex::<16>("e5e973e5a6b2a43f48e7dc849e37bfcf");
        let client = hex::<8>("2464c4abcf10c957");
        let made = server_cookie(&secret, &client, ip("198.51.100.100"), 1559731985);
        assert_eq!(made, hex::<16>("010000005cf79f111f8130c3eee29480"));
        // A.2: 40 minutes later it is still valid, and renewed.
        assert!(is_valid(
            &[secret],
            &client,
            &made,
            ip("198.51.100.100"),
            1559734385
        ));
        assert_eq!(
            server_cookie(&secret, &client, ip("198.51.100.100"), 1559734385),
            hex::<16>("010000005cf7a871d4a564a1442aca77")
        );
        // A.3: another client's cookie with reserved octets set; hashed as received.
        let client3 = hex::<8>("fc93fc62807ddb86");
        let server3 = hex::<16>("01abcdef5cf78f71a314227b6679ebf5");
        let at = 0x5cf78f71 + 60;
        assert!(is_valid(
            &[secret],
            &client3,
            &server3,
            ip("203.0.113.203"),
            at
        ));
        assert!(!is_valid(
            &[secret],
            &client3,
            &server3,
            ip("203.0.113.204"),
            at
        ));
        // A.4: an IPv6 client, the secret rolled over: the old one still checks.
        let old = hex::<16>("dd3bdf9344b678b185a6f5cb60fca715");
        let new = hex::<16>("445536bcd2513298075a5d379663c962");
        let client4 = hex::<8>("22681ab97d52c298");
        let server4 = hex::<16>("010000005cf7c57926556bd0934c72f8");
        let ip4 = ip("2001:db8:220:1:59de:d0f4:8769:82b8");
        let at = 0x5cf7c579 + 60;
        assert!(!is_valid(&[new], &client4, &server4, ip4, at));
        assert!(is_valid(&[new, old], &client4, &server4, ip4, at));
    }

    #[test]
    fn rfc9018_s4_3_lifetime_is_an_hour_back_and_five_minutes_ahead() {
        let secret = [7u8; 16];
        let client = [1u8; 8];
        let a = ip("192.0.2.1");
        let check = |made: u32, now: u32| {
            is_valid(
                &[secret],
                &client,
                &server_cookie(&secret, &client, a, made),
                a,
                now,
            )
        };
        let t = 1_700_000_000;
        assert!(check(t, t));
        assert!(check(t - MAX_AGE, t));
        assert!(!check(t - MAX_AGE - 1, t));
        assert!(check(t + MAX_SKEW, t));
        assert!(!check(t + MAX_SKEW + 1, t));
        // across the 2^32 wrap
        assert!(check(u32::MAX - 100, 200));
    }

    #[test]
    fn now_is_the_unix_time() {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        assert!(now().abs_diff(system) <= 1, "{} vs {system}", now());
    }

    #[test]
    fn a_cookie_is_bound_to_client_cookie_address_and_secret() {
        let secret = [7u8; 16];
        let client = [1u8; 8];
        let a = ip("192.0.2.1");
        let t = 1_700_000_000;
        let s = server_cookie(&secret, &client, a, t);
        assert!(is_valid(&[secret], &client, &s, a, t));
        assert!(!is_valid(&[secret], &[2u8; 8], &s, a, t));
        assert!(!is_valid(&[secret], &client, &s, ip("192.0.2.2"), t));
        assert!(!is_valid(&[[8u8; 16]], &client, &s, a, t));
        assert!(!is_valid(&[secret], &client, &s[..8], a, t), "too short");
        let mut v2 = s;
        v2[0] = 2;
        assert!(!is_valid(&[secret], &client, &v2, a, t), "unknown version");
        // IPv4-mapped IPv6 is the same client
        assert!(is_valid(&[secret], &client, &s, ip("::ffff:192.0.2.1"), t));
    }
}
