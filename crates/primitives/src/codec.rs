//! The one canonical encoding (postcard) and size-limited decoding of peer input.
//!
//! Every type a peer can send implements [`WireDecode`], which names its largest encoding.
//! [`decode`] refuses an over-long input before parsing it, rejects trailing bytes and
//! non-canonical encodings (so each value has exactly one encoding), and runs the type's own
//! structural checks.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the type's limit; it was not parsed.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid encoding.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// postcard's reason.
        reason: String,
    },
    /// A valid value was followed by more bytes.
    #[error("{what} followed by {extra} trailing bytes")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// How many bytes were left over.
        extra: usize,
    },
    /// The bytes decode, but are not the value's canonical encoding (an over-long varint): only
    /// the canonical one is accepted, so every value has exactly one encoding.
    #[error("{what} of {len} bytes is not canonical: its canonical encoding has {canonical} bytes")]
    NonCanonical {
        /// What was being decoded.
        what: &'static str,
        /// Input length.
        len: usize,
        /// Length of the canonical encoding.
        canonical: usize,
    },
    /// A list holds more items than allowed.
    #[error("{what} holds {count} items, more than the limit of {max}")]
    TooManyItems {
        /// What was being decoded.
        what: &'static str,
        /// Items found.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// A type that can arrive from the network.
pub trait WireDecode: DeserializeOwned + Serialize {
    /// Largest acceptable encoding, in bytes.
    const MAX_BYTES: usize;
    /// Name used in errors.
    const WHAT: &'static str;

    /// Structural checks beyond the encoding (item counts); default none.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Fails with [`DecodeError::TooManyItems`] when `count` exceeds `max` (for `WireDecode::check`).
pub fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), DecodeError> {
    if count > max {
        return Err(DecodeError::TooManyItems { what, count, max });
    }
    Ok(())
}

/// The canonical encoding of `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // postcard only fails for types serde cannot describe (maps with non-string keys are fine,
    // unknown-length sequences are not); none of ours do that.
    postcard::to_stdvec(value).expect("postcard encodes all PlayerGold types")
}

/// The length of the canonical encoding of `value`, without allocating it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).expect("postcard sizes all PlayerGold types")
}

/// Decodes peer input into `T`, enforcing `T`'s size limit, no trailing bytes, the canonical
/// encoding and `T::check`.
pub fn decode<T: WireDecode>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > T::MAX_BYTES {
        return Err(DecodeError::TooLarge {
            what: T::WHAT,
            len: bytes.len(),
            max: T::MAX_BYTES,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| DecodeError::Malformed {
            what: T::WHAT,
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: T::WHAT,
            extra: rest.len(),
        });
    }
    // postcard accepts over-long varints. Each field's canonical encoding is its shortest, so the
    // input is canonical exactly when it is as long as the value's encoding.
    let canonical = encoded_len(&value);
    if canonical != bytes.len() {
        return Err(DecodeError::NonCanonical {
            what: T::WHAT,
            len: bytes.len(),
            canonical,
        });
    }
    value.check()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Probe(u64, bool);

    impl WireDecode for Probe {
        const MAX_BYTES: usize = 16;
        const WHAT: &'static str = "probe";
    }

    /// postcard accepts an over-long varint (0 as `80 00`), so a value had several encodings; the
    /// `decode_*` fuzz targets assert one encoding per value.
    #[test]
    fn only_the_canonical_encoding_is_accepted() {
        assert_eq!(decode::<Probe>(&[0x00, 0x01]), Ok(Probe(0, true)));
        assert_eq!(encode(&Probe(0, true)), [0x00, 0x01]);
        assert_eq!(
            decode::<Probe>(&[0x80, 0x00, 0x01]),
            Err(DecodeError::NonCanonical {
                what: "probe",
                len: 3,
                canonical: 2
            })
        );
        assert!(decode::<Probe>(&[0xff, 0x80, 0x00, 0x01]).is_err());
    }
}
