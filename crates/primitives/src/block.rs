//! Blocks: a signed header linking to its parent, and the transactions it commits to.

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};
use crate::hash::{BlockHash, Hash32, TxId};
use crate::keys::{Keypair, PublicKey, Signature, SignatureError};
use crate::merkle::merkle_root;
use crate::tx::Transaction;
use crate::units::{Height, TimestampMs};

/// Domain tag prepended to a block hash before signing (see `TX_SIGNING_DOMAIN`).
const BLOCK_SIGNING_DOMAIN: &[u8] = b"playergold/blk/1";

/// The signed fields of a header, in canonical order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedHeader {
    /// Hash of the parent block.
    pub parent: BlockHash,
    /// Parent's height + 1.
    pub height: Height,
    /// When the producer made it; decides the slot under proof-of-authority.
    pub timestamp_ms: TimestampMs,
    /// Merkle root of the ids of `Block::txs`.
    pub tx_root: Hash32,
    /// The producer's key.
    pub producer: PublicKey,
}

impl UnsignedHeader {
    /// blake3 of the canonical encoding: the block's hash.
    pub fn hash(&self) -> BlockHash {
        BlockHash::from(Hash32::digest(&codec::encode(self)))
    }
}

/// A block header with the producer's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Hash of the parent block.
    pub parent: BlockHash,
    /// Parent's height + 1.
    pub height: Height,
    /// When the producer made it.
    pub timestamp_ms: TimestampMs,
    /// Merkle root of the transaction ids.
    pub tx_root: Hash32,
    /// The producer's key.
    pub producer: PublicKey,
    /// The producer's signature over the signing message of the hash.
    pub signature: Signature,
}

impl BlockHeader {
    /// The signed fields.
    pub fn unsigned(&self) -> UnsignedHeader {
        UnsignedHeader {
            parent: self.parent,
            height: self.height,
            timestamp_ms: self.timestamp_ms,
            tx_root: self.tx_root,
            producer: self.producer,
        }
    }

    /// The block hash (blake3 of the unsigned header's encoding).
    pub fn hash(&self) -> BlockHash {
        self.unsigned().hash()
    }

    /// The bytes the signature covers.
    pub fn signing_message(&self) -> [u8; 48] {
        signing_message(&self.hash())
    }

    /// Checks the producer's signature alone (headers-first sync uses this).
    pub fn verify_signature(&self) -> Result<(), SignatureError> {
        self.producer
            .verify(&self.signing_message(), &self.signature)
    }
}

fn signing_message(hash: &BlockHash) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..16].copy_from_slice(BLOCK_SIGNING_DOMAIN);
    m[16..].copy_from_slice(&hash.0);
    m
}

impl codec::WireDecode for BlockHeader {
    const MAX_BYTES: usize = crate::MAX_HEADER_BYTES;
    const WHAT: &'static str = "block header";
}

/// A header and its transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The transactions, in the order the merkle root commits to.
    pub txs: Vec<Transaction>,
}

impl Block {
    /// Builds and signs a block from its parts; computes the merkle root.
    pub fn build(
        key: &Keypair,
        parent: BlockHash,
        height: Height,
        timestamp_ms: TimestampMs,
        txs: Vec<Transaction>,
    ) -> Block {
        let ids: Vec<TxId> = txs.iter().map(Transaction::id).collect();
        let unsigned = UnsignedHeader {
            parent,
            height,
            timestamp_ms,
            tx_root: merkle_root(&ids),
            producer: key.public(),
        };
        let signature = key.sign(&signing_message(&unsigned.hash()));
        let header = BlockHeader {
            parent,
            height,
            timestamp_ms,
            tx_root: unsigned.tx_root,
            producer: unsigned.producer,
            signature,
        };
        Block { header, txs }
    }

    /// The block hash.
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    /// The ids of the transactions, in order.
    pub fn tx_ids(&self) -> Vec<TxId> {
        self.txs.iter().map(Transaction::id).collect()
    }

    /// Verifies the header signature and every transaction signature in one batch, given the tx
    /// ids (callers have them already from the merkle check).
    pub fn verify_signatures(&self, ids: &[TxId]) -> Result<(), SignatureError> {
        let n = self.txs.len() + 1;
        let mut msgs: Vec<[u8; 48]> = Vec::with_capacity(n);
        let mut sigs = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        msgs.push(self.header.signing_message());
        sigs.push(self.header.signature);
        keys.push(self.header.producer);
        for (tx, id) in self.txs.iter().zip(ids) {
            msgs.push(crate::tx::signing_message(id));
            sigs.push(tx.signature);
            keys.push(tx.from);
        }
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        crate::keys::verify_batch(&refs, &sigs, &keys)
    }
}

impl codec::WireDecode for Block {
    const MAX_BYTES: usize = crate::MAX_BLOCK_BYTES;
    const WHAT: &'static str = "block";

    fn check(&self) -> Result<(), DecodeError> {
        codec::check_count(Self::WHAT, self.txs.len(), crate::MAX_BLOCK_TXS)
    }
}
