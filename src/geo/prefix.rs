//! Prefix arithmetic for [`super::Geo::locate`]: addresses as left-aligned bit strings, the
//! compiled `[nets]` overrides and the table of non-public address blocks.
//!
//! Both families share one representation: an address is a `u128` whose most significant bits
//! are the address (an IPv4 address occupies the top 32 bits), so prefix tests are a shift and a
//! compare, and a prefix length is always in bits of the address's own family.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::NetOverride;

/// An address as a left-aligned bit string plus its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bits {
    /// The address bits, left-aligned.
    pub(super) bits: u128,
    /// True for IPv6.
    pub(super) v6: bool,
}

impl Bits {
    /// Returns the bits of `ip` (which must already be canonical).
    pub(super) fn of(ip: IpAddr) -> Bits {
        match ip {
            IpAddr::V4(v4) => Bits {
                bits: u128::from(u32::from(v4)) << 96,
                v6: false,
            },
            IpAddr::V6(v6) => Bits {
                bits: u128::from(v6),
                v6: true,
            },
        }
    }

    /// Returns the family's width in bits (32 or 128).
    pub(super) fn width(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    /// Returns the number of leading bits `self` and `other` (same family) have in common.
    pub(super) fn common_prefix_len(self, other: u128) -> u8 {
        // leading_zeros is at most 128, so the cast cannot truncate.
        let common = (self.bits ^ other).leading_zeros() as u8;
        common.min(self.width())
    }
}

/// Returns `bits` with everything after the first `len` bits cleared.
pub(super) fn mask(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len.min(128))))
    }
}

/// A network in the left-aligned representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Net {
    /// Network bits, left-aligned, host bits cleared.
    pub(super) bits: u128,
    /// Prefix length in bits of the family.
    pub(super) len: u8,
    /// True for IPv6.
    pub(super) v6: bool,
}

impl Net {
    /// Converts an [`IpNet`]; an IPv4-mapped IPv6 network (`::ffff:a.b.c.d/n`, n >= 96) becomes
    /// the IPv4 network, because [`super::Geo::locate`] only ever sees canonical addresses.
    pub(super) fn of(net: IpNet) -> Net {
        if let IpNet::V6(v6) = net
            && v6.prefix_len() >= 96
            && let Some(v4) = v6.network().to_ipv4_mapped()
        {
            return Net {
                bits: mask(u128::from(u32::from(v4)) << 96, v6.prefix_len() - 96),
                len: v6.prefix_len() - 96,
                v6: false,
            };
        }
        let b = Bits::of(net.network());
        Net {
            bits: mask(b.bits, net.prefix_len()),
            len: net.prefix_len(),
            v6: b.v6,
        }
    }

    /// Returns true when `ip` is inside this network.
    pub(super) fn contains(&self, ip: Bits) -> bool {
        self.v6 == ip.v6 && mask(ip.bits, self.len) == self.bits
    }
}

/// Returns `scope` narrowed so that the network `ip/scope` excludes `other`, which must not
/// contain `ip`: the first bit where `ip` and `other` differ becomes part of the scope. Only
/// networks inside `ip/scope` narrow it; anything else is already excluded.
pub(super) fn narrow(scope: u8, ip: Bits, other: &Net) -> u8 {
    if other.v6 != ip.v6 || other.len <= scope || mask(other.bits, scope) != mask(ip.bits, scope) {
        return scope;
    }
    // other does not contain ip, so they differ within other's prefix: the common prefix is
    // shorter than other.len and the result is at most other.len.
    scope.max(ip.common_prefix_len(other.bits) + 1)
}

/// One compiled `[nets]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Override {
    /// The client network.
    pub(super) net: Net,
    /// The region clients in `net` are sent to.
    pub(super) region: Arc<str>,
}

/// The `[nets]` overrides, ready for longest-prefix lookups.
#[derive(Debug, Clone, Default)]
pub(super) struct Overrides {
    /// Entries sorted by descending prefix length (stable: file order among equals), so the
    /// first match is the longest.
    entries: Vec<Override>,
}

impl Overrides {
    /// Compiles `nets` (file order; for an exact duplicate the first entry wins).
    pub(super) fn new(nets: &[NetOverride]) -> Overrides {
        let mut entries: Vec<Override> = nets
            .iter()
            .map(|n| Override {
                net: Net::of(n.net),
                region: Arc::from(n.region.as_str()),
            })
            .collect();
        entries.sort_by_key(|o| std::cmp::Reverse(o.net.len));
        Overrides { entries }
    }

    /// Returns every override, longest prefix first (file order among equals).
    pub(super) fn entries(&self) -> &[Override] {
        &self.entries
    }

    /// Returns the longest override containing `ip`.
    pub(super) fn longest_match(&self, ip: Bits) -> Option<&Override> {
        self.entries.iter().find(|o| o.net.contains(ip))
    }

    /// Returns `scope` narrowed by every override that lies inside `ip/scope`, does not contain
    /// `ip` and (when `same_region` is given) sends clients to a different region than it.
    pub(super) fn narrow(&self, mut scope: u8, ip: Bits, same_region: Option<&str>) -> u8 {
        for o in &self.entries {
            if o.net.contains(ip) || same_region.is_some_and(|r| *o.region == *r) {
                continue;
            }
            scope = narrow(scope, ip, &o.net);
        }
        scope
    }
}

/// Address blocks that are never located: `locate` answers them with no location without
/// consulting the database (a `[nets]` entry still wins). Documentation ranges (192.0.2.0/24,
/// 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are deliberately absent: the sample
/// database and the examples locate them.
const NON_PUBLIC: &[(IpAddrLiteral, u8)] = &[
    (IpAddrLiteral::V4([0, 0, 0, 0]), 8),  // "this network", RFC 791
    (IpAddrLiteral::V4([10, 0, 0, 0]), 8), // private, RFC 1918
    (IpAddrLiteral::V4([100, 64, 0, 0]), 10), // shared address space (CGN), RFC 6598
    (IpAddrLiteral::V4([127, 0, 0, 0]), 8), // loopback
    (IpAddrLiteral::V4([169, 254, 0, 0]), 16), // link local, RFC 3927
    (IpAddrLiteral::V4([172, 16, 0, 0]), 12), // private, RFC 1918
    (IpAddrLiteral::V4([192, 168, 0, 0]), 16), // private, RFC 1918
    (IpAddrLiteral::V4([224, 0, 0, 0]), 4), // multicast
    (IpAddrLiteral::V4([240, 0, 0, 0]), 4), // reserved and broadcast
    (IpAddrLiteral::V6([0, 0, 0, 0, 0, 0, 0, 0]), 128), // unspecified
    (IpAddrLiteral::V6([0, 0, 0, 0, 0, 0, 0, 1]), 128), // loopback
    (IpAddrLiteral::V6([0x100, 0, 0, 0, 0, 0, 0, 0]), 64), // discard only, RFC 6666
    (IpAddrLiteral::V6([0xfc00, 0, 0, 0, 0, 0, 0, 0]), 7), // unique local, RFC 4193
    (IpAddrLiteral::V6([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10), // link local
    (IpAddrLiteral::V6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8), // multicast
];

/// An address written as a constant.
#[derive(Debug, Clone, Copy)]
enum IpAddrLiteral {
    V4([u8; 4]),
    V6([u16; 8]),
}

/// The compiled [`NON_PUBLIC`] table.
pub(super) fn non_public() -> Vec<Net> {
    NON_PUBLIC
        .iter()
        .map(|&(addr, len)| {
            let ip = match addr {
                IpAddrLiteral::V4(o) => IpAddr::from(o),
                IpAddrLiteral::V6(s) => IpAddr::from(s),
            };
            Net {
                bits: mask(Bits::of(ip).bits, len),
                len,
                v6: ip.is_ipv6(),
            }
        })
        .collect()
}

/// How an IPv6 address embeds the IPv4 address that locates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Rule {
    /// The address itself.
    Direct,
    /// IPv4-mapped IPv6, `::ffff:a.b.c.d` (`::ffff:0:0/96`).
    Ipv4Mapped,
    /// IPv4-compatible IPv6, `::a.b.c.d` (`::/96`, deprecated by RFC 4291 but still sent).
    Ipv4Compatible,
    /// NAT64 (RFC 6052): the IPv4 address after a prefix of this length (32, 40, 48, 56, 64 or
    /// 96 bits; bits 64..72 are skipped).
    Nat64(u8),
    /// 6to4 (RFC 3056): `2002:AABB:CCDD::/48` embeds `A.B.C.D`.
    SixToFour,
    /// Teredo (RFC 4380): `2001:0::/32`, the client's address inverted in the last 32 bits.
    Teredo,
}

impl Rule {
    /// Returns the position (0-based bit of the IPv6 address) of bit `i` of the IPv4 address.
    fn position(self, i: u8) -> u8 {
        match self {
            Rule::Direct => i,
            Rule::Ipv4Mapped | Rule::Ipv4Compatible | Rule::Teredo => 96 + i,
            Rule::SixToFour => 16 + i,
            // RFC 6052 §2.2: bits 64 to 71 (the "u" octet) are zero and carry nothing.
            Rule::Nat64(p) if p + i >= 64 && p < 96 => p + i + 8,
            Rule::Nat64(p) => p + i,
        }
    }

    /// Returns the IPv4 address embedded in `v6`.
    pub(super) fn extract(self, v6: u128) -> u32 {
        let mut v4 = 0u32;
        for i in 0..32u8 {
            let bit = (v6 >> (127 - u32::from(self.position(i)))) & 1;
            v4 = (v4 << 1) | bit as u32;
        }
        if self == Rule::Teredo { !v4 } else { v4 }
    }

    /// Converts an IPv4 scope into the IPv6 scope of the embedding network (`prefix_len`
    /// long): the IPv6 network holding the first `inner` bits of the IPv4 address; all of
    /// the embedding network when `inner` is 0.
    pub(super) fn outer_scope(self, prefix_len: u8, inner: u8) -> u8 {
        match (self, inner) {
            (Rule::Direct, s) => s,
            (_, 0) => prefix_len,
            (_, s) => self.position(s.min(32) - 1) + 1,
        }
    }
}

/// One IPv6 network whose addresses are located by the IPv4 address they embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Embedding {
    /// The IPv6 network.
    pub(super) net: Net,
    /// How it embeds the IPv4 address.
    pub(super) rule: Rule,
}

/// The NAT64 well-known prefix, RFC 6052 §2.1.
pub(super) const NAT64_WELL_KNOWN: &str = "64:ff9b::/96";

/// Returns the embedding networks, longest first: IPv4-mapped and IPv4-compatible always; NAT64
/// (the well-known prefix and `nat64`), 6to4 and Teredo when `transition` is on.
pub(super) fn embeddings(transition: bool, nat64: &[ipnet::Ipv6Net]) -> Vec<Embedding> {
    let net = |s: &str| -> Net {
        // The literals below are valid networks.
        let n: IpNet = s.parse().expect("valid network literal");
        let b = Bits::of(n.network());
        Net {
            bits: mask(b.bits, n.prefix_len()),
            len: n.prefix_len(),
            v6: true,
        }
    };
    let mut out = vec![
        Embedding {
            net: net("::ffff:0:0/96"),
            rule: Rule::Ipv4Mapped,
        },
        Embedding {
            net: net("::/96"),
            rule: Rule::Ipv4Compatible,
        },
    ];
    if transition {
        let mut prefixes: Vec<ipnet::Ipv6Net> =
            vec![NAT64_WELL_KNOWN.parse().expect("valid network literal")];
        prefixes.extend(nat64.iter().map(|n| n.trunc()));
        for p in prefixes {
            let e = Embedding {
                net: net(&p.to_string()),
                rule: Rule::Nat64(p.prefix_len()),
            };
            if !out.iter().any(|o| o.net == e.net) {
                out.push(e);
            }
        }
        out.push(Embedding {
            net: net("2002::/16"),
            rule: Rule::SixToFour,
        });
        out.push(Embedding {
            net: net("2001::/32"),
            rule: Rule::Teredo,
        });
    }
    // Longest first, so that a configured NAT64 prefix inside 2001::/32 wins over Teredo.
    out.sort_by_key(|e| std::cmp::Reverse(e.net.len));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> Bits {
        Bits::of(s.parse().unwrap())
    }

    fn net(s: &str) -> Net {
        Net::of(s.parse().unwrap())
    }

    #[test]
    fn mask_keeps_only_the_prefix() {
        assert_eq!(mask(u128::MAX, 0), 0);
        assert_eq!(mask(u128::MAX, 128), u128::MAX);
        assert_eq!(mask(u128::MAX, 1), 1 << 127);
    }

    #[test]
    fn common_prefix_len_is_capped_at_the_family_width() {
        assert_eq!(
            bits("10.0.0.1").common_prefix_len(bits("10.0.0.1").bits),
            32
        );
        assert_eq!(
            bits("10.0.0.1").common_prefix_len(bits("10.0.0.0").bits),
            31
        );
        assert_eq!(bits("::1").common_prefix_len(bits("::1").bits), 128);
        assert_eq!(bits("128.0.0.0").common_prefix_len(0), 0);
    }

    #[test]
    fn contains_checks_family_and_prefix() {
        assert!(net("10.0.0.0/8").contains(bits("10.255.0.1")));
        assert!(!net("10.0.0.0/8").contains(bits("11.0.0.1")));
        assert!(!net("::/0").contains(bits("10.0.0.1")));
        assert!(net("0.0.0.0/0").contains(bits("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_override_becomes_ipv4() {
        let n = net("::ffff:10.20.0.0/112");
        assert_eq!(n, net("10.20.0.0/16"));
        assert!(n.contains(bits("10.20.1.2")));
    }

    #[test]
    fn narrow_stops_at_the_first_differing_bit() {
        // 10.1.x and 10.20.x share 11 bits: the scope must keep the 12th.
        assert_eq!(narrow(8, bits("10.1.2.3"), &net("10.20.0.0/16")), 12);
        // A network outside ip/scope does not narrow it.
        assert_eq!(narrow(8, bits("10.1.2.3"), &net("11.0.0.0/16")), 8);
        // Nor does one that is wider than the scope.
        assert_eq!(narrow(16, bits("10.1.2.3"), &net("10.0.0.0/8")), 16);
        // Adjacent siblings: the scope becomes the sibling's length.
        assert_eq!(narrow(8, bits("10.0.0.1"), &net("10.0.0.2/31")), 31);
        assert_eq!(narrow(8, bits("10.0.0.1"), &net("10.0.0.0/32")), 32);
        assert_eq!(narrow(0, bits("2001:db8::1"), &net("2001:db8::/128")), 128);
    }

    #[test]
    fn overrides_match_the_longest_prefix_first() {
        let o = Overrides::new(&[
            NetOverride {
                net: "10.0.0.0/8".parse().unwrap(),
                region: "a".into(),
            },
            NetOverride {
                net: "10.20.0.0/16".parse().unwrap(),
                region: "b".into(),
            },
        ]);
        assert_eq!(&*o.longest_match(bits("10.20.0.1")).unwrap().region, "b");
        assert_eq!(&*o.longest_match(bits("10.21.0.1")).unwrap().region, "a");
        assert!(o.longest_match(bits("11.0.0.1")).is_none());
    }

    #[test]
    fn non_public_table_compiles_with_clean_host_bits() {
        for n in non_public() {
            assert_eq!(mask(n.bits, n.len), n.bits, "{n:?}");
        }
        assert!(non_public().iter().any(|n| n.contains(bits("192.168.1.1"))));
        assert!(!non_public().iter().any(|n| n.contains(bits("192.0.2.1"))));
    }
}
