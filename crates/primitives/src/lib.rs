//! PlayerGold primitives: the types every other crate moves around, and nothing else.
//!
//! This crate owns the *shape* of the data — hashes, keys, signatures, transactions, blocks, the
//! genesis — and its one canonical byte encoding. It does no I/O, keeps no state and knows no clock:
//! callers pass time in. Everything that arrives from a peer enters the program through
//! [`codec::decode`], which enforces the size limits below and rejects trailing bytes, so a value of
//! these types is always well formed (a [`PublicKey`] is always a valid, non-weak curve point).
//!
//! ```text
//!  peer bytes ──► codec::decode (size limits, no trailing bytes) ──► Transaction / Block / BlockHeader
//!                                                                        │
//!      TxId = blake3(unsigned tx)  BlockHash = blake3(unsigned header)   │ verify / verify_batch
//!                                                                        ▼
//!                                                       playergold-chain (validation, store, fork choice)
//! ```

mod block;
pub mod codec;
mod genesis;
mod hash;
mod keys;
mod merkle;
mod tx;
mod units;

pub use block::{Block, BlockHeader, UnsignedHeader};
pub use genesis::{
    Genesis, GenesisError, MAX_NETWORK_NAME_LEN, MAX_VALIDATORS, MIN_SLOT_DURATION_MS,
};
pub use hash::{Address, BlockHash, Hash32, ParseHexError, TxId};
pub use keys::{KeyError, Keypair, PublicKey, Signature, SignatureError, verify_batch};
pub use merkle::merkle_root;
pub use tx::{Transaction, UnsignedTransaction};
pub use units::{Amount, Height, Nonce, TimestampMs, Work};

/// Largest encoded transaction we accept, in bytes. A well-formed transaction encodes to about
/// 150 bytes; the slack leaves room for future fields without letting a peer send kilobytes.
pub const MAX_TX_BYTES: usize = 512;

/// Most transactions one block may carry. Sized so that a full block verifies in well under a
/// slot on a modest machine (about 40 ms of batched ed25519 on one core).
pub const MAX_BLOCK_TXS: usize = 5_000;

/// Largest encoded block we accept, in bytes: a header plus `MAX_BLOCK_TXS` transactions of
/// typical size, rounded up. Bounds the memory one block from a peer can make us allocate.
pub const MAX_BLOCK_BYTES: usize = 1024 * 1024;

/// Largest encoded block header we accept, in bytes (a header is about 220 bytes).
pub const MAX_HEADER_BYTES: usize = 512;
