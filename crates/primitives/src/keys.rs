//! ed25519 keys and signatures, single and batched verification.
//!
//! A [`PublicKey`] can only hold a valid, non-weak (not small-order) curve point: decoding checks
//! it once, so verification never has to.
//!
//! One verification rule for every signature, single or batched: ZIP-215's (ed25519-zebra), the
//! cofactored equation `[8][s]B = [8]R + [8][k]A` with a canonical `s`. Its batch check accepts
//! exactly the signatures its single check accepts, so a block verified in one batch and the same
//! transactions verified one by one in a mempool can never disagree: with RFC 8032's cofactorless
//! single check and a cofactorless batch (ed25519-dalek's), a signer can craft signatures that
//! pass one and fail the other, or pass the batch at random, and split the network.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::hash::{Address, Hash32};

/// Why a key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The 32 bytes are not a point on the curve.
    #[error("public key bytes are not a valid ed25519 point")]
    InvalidPoint,
    /// The point has small order: anyone could forge signatures for it.
    #[error("public key is a weak (small-order) ed25519 point")]
    WeakKey,
    /// A secret key file did not hold exactly 32 bytes.
    #[error(
        "secret key must be 32 bytes, found {0}: regenerate it with `playergold keys generate`"
    )]
    BadSecretLength(usize),
}

/// A signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// One signature is invalid for its key and message.
    #[error("invalid ed25519 signature")]
    Invalid,
    /// At least one signature of a batch is invalid.
    #[error("invalid ed25519 signature in a batch of {0}")]
    InvalidInBatch(usize),
}

/// An ed25519 public key that is a valid, non-weak point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    /// The parsed point (parsing and the weak-key check are dalek's). Verification is
    /// ZIP-215's (ed25519-zebra), which takes the key as bytes: a batch decompresses each key
    /// itself, so keeping a second decompressed copy here would cost every decoded key a
    /// decompression (a fifth of a signature check) that batches never use.
    key: ed25519_dalek::VerifyingKey,
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.as_bytes().hash(state);
    }
}

impl PublicKey {
    /// Parses and checks 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(PublicKey::from_dalek(key))
    }

    fn from_dalek(key: ed25519_dalek::VerifyingKey) -> PublicKey {
        PublicKey { key }
    }

    /// The compressed point.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The account address owned by this key: the first 20 bytes of blake3(key).
    pub fn address(&self) -> Address {
        let h = Hash32::digest(self.key.as_bytes());
        let mut a = [0u8; 20];
        a.copy_from_slice(&h.0[..20]);
        Address(a)
    }

    /// Verifies `sig` over `msg` under the ZIP-215 rule (see the module documentation): the
    /// same rule as [`verify_batch`].
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), SignatureError> {
        let sig = ed25519_zebra::Signature::from_bytes(&sig.0);
        // Every point dalek decompresses, ZIP-215 decompresses too (it also accepts
        // non-canonical encodings, a superset), so this fails only with the signature.
        ed25519_zebra::VerificationKey::try_from(self.key.to_bytes())
            .and_then(|key| key.verify(&sig, msg))
            .map_err(|_| SignatureError::Invalid)
    }

    /// Lowercase hex of the key.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.as_bytes().cmp(other.key.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.to_bytes().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(&text, &mut bytes)
                .map_err(|_| de::Error::custom("public key must be 64 hex characters"))?;
            bytes
        } else {
            <[u8; 32]>::deserialize(d)?
        };
        PublicKey::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The all-zero signature, used for the unsigned genesis block only.
    pub const ZERO: Signature = Signature([0; 64]);
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..6]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if s.is_human_readable() {
            return s.serialize_str(&hex::encode(self.0));
        }
        let mut t = s.serialize_tuple(64)?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let mut bytes = [0u8; 64];
            hex::decode_to_slice(&text, &mut bytes)
                .map_err(|_| de::Error::custom("signature must be 128 hex characters"))?;
            return Ok(Signature(bytes));
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Signature, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(out))
            }
        }
        d.deserialize_tuple(64, V)
    }
}

/// A signing key with its public half. Zeroed on drop.
#[derive(Clone)]
pub struct Keypair(ed25519_dalek::SigningKey);

impl Keypair {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Keypair {
        Keypair(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a 32-byte secret seed.
    pub fn from_secret(seed: &[u8; 32]) -> Keypair {
        Keypair(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A key from a secret of any slice length; errors unless it is 32 bytes.
    pub fn from_secret_slice(seed: &[u8]) -> Result<Keypair, KeyError> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| KeyError::BadSecretLength(seed.len()))?;
        Ok(Keypair::from_secret(&seed))
    }

    /// The 32-byte secret seed (what key files store).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        // A key derived from a secret scalar is never weak (weak points have small order, a
        // clamped secret times the base point has order l).
        PublicKey::from_dalek(self.0.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.0.sign(msg).to_bytes())
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.public())
    }
}

/// Verifies many `(message, signature, key)` triples at once, about twice as fast per signature
/// as one by one. All must be valid for `Ok`; it is `Ok` exactly when [`PublicKey::verify`]
/// accepts every triple (ZIP-215), whatever the random coefficients drawn.
pub fn verify_batch(
    messages: &[&[u8]],
    signatures: &[Signature],
    keys: &[PublicKey],
) -> Result<(), SignatureError> {
    let n = messages.len();
    if signatures.len() != n || keys.len() != n {
        return Err(SignatureError::InvalidInBatch(n));
    }
    if n == 0 {
        return Ok(());
    }
    if n == 1 {
        return keys[0]
            .verify(messages[0], &signatures[0])
            .map_err(|_| SignatureError::InvalidInBatch(1));
    }
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for ((msg, sig), key) in messages.iter().zip(signatures).zip(keys) {
        batch.queue((
            ed25519_zebra::VerificationKeyBytes::from(key.to_bytes()),
            ed25519_zebra::Signature::from_bytes(&sig.0),
            msg,
        ));
    }
    // The coefficients must be unpredictable to whoever chose the signatures.
    batch
        .verify(rand::thread_rng())
        .map_err(|_| SignatureError::InvalidInBatch(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature whose `R` carries a small-order component (its signer can always make one):
    /// RFC 8032's cofactorless check refuses it, the cofactored ZIP-215 check accepts it. What
    /// matters is that our single and batch checks agree on it, every time (a cofactorless
    /// batch accepts it at random, with the random coefficients).
    #[test]
    fn single_and_batch_checks_agree_on_a_signature_with_a_torsion_component() {
        use curve25519_dalek::constants::ED25519_BASEPOINT_POINT as B;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest, Sha512};

        let a = Scalar::from(0x1234_5678_9abc_def0_u64);
        let key = PublicKey::from_bytes(&(a * B).compress().to_bytes()).expect("valid key");
        // A point of order 4 (y = 0).
        let t = CompressedEdwardsY([0; 32])
            .decompress()
            .expect("on the curve");
        assert!(t.is_small_order());
        let msg = b"torsion";
        let r = Scalar::from(987_654_321_u64);
        let big_r = (r * B + t).compress();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(big_r.as_bytes())
                .chain_update(key.to_bytes())
                .chain_update(msg),
        );
        let s = r + k * a;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(big_r.as_bytes());
        bytes[32..].copy_from_slice(s.as_bytes());
        let sig = Signature(bytes);

        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&key.to_bytes()).expect("key");
        assert!(
            dalek
                .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&bytes))
                .is_err(),
            "the cofactorless check refuses it"
        );
        assert_eq!(key.verify(msg, &sig), Ok(()), "ZIP-215 accepts it");
        let other = Keypair::from_secret(&[3; 32]);
        let other_sig = other.sign(b"plain");
        for _ in 0..64 {
            assert_eq!(
                verify_batch(
                    &[msg.as_slice(), b"plain"],
                    &[sig, other_sig],
                    &[key, other.public()]
                ),
                Ok(()),
                "the batch accepts it too, whatever its coefficients"
            );
        }
        // And a real forgery still fails both.
        let mut forged = bytes;
        forged[40] ^= 1;
        assert!(key.verify(msg, &Signature(forged)).is_err());
        assert!(
            verify_batch(
                &[msg.as_slice(), b"plain"],
                &[Signature(forged), other_sig],
                &[key, other.public()]
            )
            .is_err()
        );
    }

    #[test]
    fn sign_verify_and_batch() {
        let k = Keypair::generate();
        let s = k.sign(b"hello");
        assert!(k.public().verify(b"hello", &s).is_ok());
        assert!(k.public().verify(b"hellp", &s).is_err());
        let k2 = Keypair::generate();
        let s2 = k2.sign(b"x");
        assert!(verify_batch(&[b"hello", b"x"], &[s, s2], &[k.public(), k2.public()]).is_ok());
        assert!(verify_batch(&[b"hello", b"y"], &[s, s2], &[k.public(), k2.public()]).is_err());
    }

    #[test]
    fn weak_and_invalid_keys_are_rejected() {
        // The identity point (encoded as 1 followed by zeros) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(KeyError::WeakKey));
        let k = Keypair::from_secret(&[9; 32]);
        assert_eq!(
            PublicKey::from_bytes(&k.public().to_bytes()),
            Ok(k.public())
        );
    }
}
