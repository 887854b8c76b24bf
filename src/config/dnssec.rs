//! The DNSSEC settings of a zone's `dnssec` table that validation needs: the algorithm names
//! and the defaults. They live here, below `dnssec`, so that `config` imports nothing above it.

use std::fmt;
use std::time::Duration;

/// Default `dnssec.signature_validity`: 14 days.
pub const DEFAULT_SIGNATURE_VALIDITY: Duration = Duration::from_secs(14 * 86_400);

/// Default `dnssec.inception_offset`: 1 hour (signatures valid for resolvers whose clock is
/// behind).
pub const DEFAULT_INCEPTION_OFFSET: Duration = Duration::from_secs(3_600);

/// Default `dnssec.signatures_per_second`: new signatures each answering thread may make per
/// second (and in a burst) for the zone, about a tenth of a core with ECDSA P-256 on the bench
/// machine; the rest is left for answering.
pub const DEFAULT_SIGNATURES_PER_SECOND: u32 = 8_000;

/// A DNSSEC signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// ECDSA with curve P-256 and SHA-256 (RFC 6605), number 13.
    #[default]
    EcdsaP256Sha256,
    /// Ed25519 (RFC 8080), number 15.
    Ed25519,
}

impl Algorithm {
    /// Returns the algorithm number (IANA DNSSEC algorithm numbers).
    pub fn number(self) -> u8 {
        match self {
            Algorithm::EcdsaP256Sha256 => 13,
            Algorithm::Ed25519 => 15,
        }
    }

    /// Parses a config name: `ecdsap256sha256` or `ed25519` (any case), or the number.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        match name.to_ascii_lowercase().as_str() {
            "ecdsap256sha256" | "13" => Some(Algorithm::EcdsaP256Sha256),
            "ed25519" | "15" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::EcdsaP256Sha256 => "ecdsap256sha256",
            Algorithm::Ed25519 => "ed25519",
        })
    }
}
