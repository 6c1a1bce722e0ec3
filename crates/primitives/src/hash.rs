//! 32-byte hashes and 20-byte addresses, as distinct types.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::fmt;
use std::str::FromStr;

impl Hash32 {
    /// blake3 of `bytes`.
    pub fn digest(bytes: &[u8]) -> Hash32 {
        Hash32(*blake3::hash(bytes).as_bytes())
    }
}

/// Error parsing a hex-encoded hash or address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseHexError {
    /// The text is not valid hex or has the wrong length.
    #[error("expected {expected} lowercase hex characters, got {got:?}")]
    Invalid {
        /// Number of hex characters expected.
        expected: usize,
        /// The text that was given.
        got: String,
    },
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseHexError> {
    let invalid = || ParseHexError::Invalid {
        expected: N * 2,
        got: s.chars().take(80).collect(),
    };
    if s.len() != N * 2 {
        return Err(invalid());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| invalid())?;
    Ok(out)
}

macro_rules! hash_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; $len]);

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(de::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(d).map($name)
                }
            }
        }

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, the form shown to operators and used in the API.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form keeps logs readable; Display gives the full value.
                write!(f, "{}({}…)", stringify!($name), &self.to_hex()[..12])
            }
        }

        impl FromStr for $name {
            type Err = ParseHexError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$len>(s).map($name)
            }
        }
    };
}

hash_newtype!(
    /// A blake3 digest.
    Hash32, 32
);
hash_newtype!(
    /// Identifies a block: blake3 of the canonical encoding of its unsigned header.
    BlockHash, 32
);
hash_newtype!(
    /// Identifies a transaction: blake3 of the canonical encoding of its unsigned fields.
    TxId, 32
);
hash_newtype!(
    /// An account address: the first 20 bytes of blake3 of the owner's ed25519 public key.
    Address, 20
);

impl BlockHash {
    /// The all-zero hash, parent of nothing real.
    pub const ZERO: BlockHash = BlockHash([0; 32]);
}

impl From<Hash32> for BlockHash {
    fn from(h: Hash32) -> Self {
        BlockHash(h.0)
    }
}

impl From<Hash32> for TxId {
    fn from(h: Hash32) -> Self {
        TxId(h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_length() {
        let h = BlockHash([7; 32]);
        assert_eq!(h.to_hex().parse::<BlockHash>(), Ok(h));
        assert!("abc".parse::<BlockHash>().is_err());
        assert!("zz".repeat(20).parse::<Address>().is_err());
        let a = Address([0xab; 20]);
        assert_eq!(a.to_string().len(), 40);
        assert_eq!(a.to_string().parse::<Address>(), Ok(a));
    }
}
