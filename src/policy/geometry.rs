//! Great-circle geometry on precomputed unit vectors, and the small fixed hashes that `policy`
//! uses for sticky answers and weighted draws.
//!
//! Regions are compiled to unit vectors once, so that ordering N regions for one client costs
//! one `sin`/`cos` pair for the client and N dot products (plus one `asin` per region only when
//! some region has a bias). Nothing here allocates.

use std::net::IpAddr;

/// Mean Earth radius used for distances, km (the same as `geo::distance_km` in tests).
pub(crate) const EARTH_RADIUS_KM: f64 = 6371.0;

/// A point on the unit sphere (x towards 0°N 0°E, z towards the north pole).
pub(crate) type Unit = [f64; 3];

/// Returns the unit vector of a point given in degrees.
pub(crate) fn unit_vector(latitude: f64, longitude: f64) -> Unit {
    let (slat, clat) = latitude.to_radians().sin_cos();
    let (slon, clon) = longitude.to_radians().sin_cos();
    [clat * clon, clat * slon, slat]
}

/// Returns the squared chord length between two unit vectors: monotonic in the great-circle
/// distance, so it orders regions without any inverse trigonometry.
#[inline]
pub(crate) fn chord2(a: &Unit, b: &Unit) -> f64 {
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    dx * dx + dy * dy + dz * dz
}

/// Returns the great-circle distance in km for a squared chord length. The chord form stays
/// precise for nearby points, where `acos(dot)` loses digits.
#[inline]
pub(crate) fn arc_km(chord2: f64) -> f64 {
    2.0 * EARTH_RADIUS_KM * (chord2.sqrt() / 2.0).min(1.0).asin()
}

/// FNV-1a 64-bit offset basis.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64-bit hash over `bytes`.
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Returns the splitmix64 output for state `x`: a bijective mixer used both to finish the FNV
/// hash (whose low bits mix poorly) and to derive the next draw from a random number.
#[inline]
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform `x` onto `0..n` (Lemire's multiply-shift; `n > 0`).
#[inline]
pub(crate) fn below(x: u64, n: u64) -> u64 {
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// Prefix length of the sticky subnet of an IPv4 client.
pub(crate) const STICKY_PREFIX_V4: u8 = 24;
/// Prefix length of the sticky subnet of an IPv6 client.
pub(crate) const STICKY_PREFIX_V6: u8 = 56;

/// Returns `ip` with everything past its sticky prefix (/24, /56) cleared.
pub(crate) fn sticky_subnet(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            o[3] = 0;
            IpAddr::from(o)
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[7..].fill(0);
            IpAddr::from(o)
        }
    }
}

/// Returns the sticky prefix length for `ip`'s family.
pub(crate) fn sticky_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => STICKY_PREFIX_V4,
        IpAddr::V6(_) => STICKY_PREFIX_V6,
    }
}

/// Returns the sticky hash of `ip`'s subnet, continuing `basis` (the FNV-1a hash of the service
/// name and a 0xff separator).
///
/// Fixed forever: FNV-1a 64 over the family tag (4 or 6) and the masked address octets, finished
/// by splitmix64. Changing it would move every sticky client at once on upgrade.
pub(crate) fn sticky_hash(basis: u64, ip: IpAddr) -> u64 {
    let h = match sticky_subnet(ip) {
        IpAddr::V4(v4) => fnv1a(fnv1a(basis, &[4]), &v4.octets()),
        IpAddr::V6(v6) => fnv1a(fnv1a(basis, &[6]), &v6.octets()),
    };
    splitmix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arc_distance_matches_the_haversine_of_geo() {
        let points = [
            (38.9, -77.4, 53.3, -6.3),
            (51.5, -0.1, 51.5, -0.1),
            (0.0, 0.0, 0.0, 180.0),
            (-33.9, 151.2, 35.7, 139.7),
            (52.52, 13.40, 52.53, 13.41),
        ];
        for (a, b, c, d) in points {
            let ours = arc_km(chord2(&unit_vector(a, b), &unit_vector(c, d)));
            let geo = crate::geo::distance_km(a, b, c, d);
            assert!((ours - geo).abs() < 1e-6 * geo.max(1.0), "{ours} vs {geo}");
        }
    }

    #[test]
    fn fnv1a_matches_the_published_test_vector() {
        // From the FNV reference test suite: FNV-1a 64 of "a".
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
    }

    #[test]
    fn sticky_subnet_clears_the_host_part() {
        assert_eq!(
            sticky_subnet("203.0.113.77".parse().unwrap()),
            "203.0.113.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            sticky_subnet("2001:db8:aa:bbcc:dd::1".parse().unwrap()),
            "2001:db8:aa:bb00::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn below_stays_in_range() {
        for x in [0, 1, u64::MAX / 2, u64::MAX] {
            assert!(below(x, 7) < 7);
        }
        assert_eq!(below(u64::MAX, 1), 0);
    }
}
