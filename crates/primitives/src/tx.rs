//! Transactions: a signed transfer of base units from one key's address to another address.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::hash::{Address, Hash32, TxId};
use crate::keys::{Keypair, PublicKey, Signature, SignatureError};
use crate::units::{Amount, Nonce, TimestampMs};

/// Domain tag prepended to a tx id before signing, so a transaction signature can never be
/// replayed as a block signature or anything else we sign.
const TX_SIGNING_DOMAIN: &[u8] = b"playergold/tx/v1";

/// The signed part of a transaction, in canonical field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsignedTransaction {
    /// Sender's key; the sender's address is `from.address()`.
    pub from: PublicKey,
    /// Recipient's address.
    pub to: Address,
    /// Amount moved, in base units.
    pub amount: Amount,
    /// Fee paid to the producer, in base units; the mempool keeps higher fees first.
    pub fee: Amount,
    /// Sender's sequence number.
    pub nonce: Nonce,
    /// When the sender made it.
    pub timestamp_ms: TimestampMs,
}

impl UnsignedTransaction {
    /// blake3 of the canonical encoding of these fields.
    pub fn id(&self) -> TxId {
        TxId::from(Hash32::digest(&codec::encode(self)))
    }

    /// Signs with `key`, which must be the key in `from`.
    pub fn sign(self, key: &Keypair) -> Transaction {
        let signature = key.sign(&signing_message(&self.id()));
        let UnsignedTransaction {
            from,
            to,
            amount,
            fee,
            nonce,
            timestamp_ms,
        } = self;
        Transaction {
            from,
            to,
            amount,
            fee,
            nonce,
            timestamp_ms,
            signature,
        }
    }
}

/// A signed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Sender's key.
    pub from: PublicKey,
    /// Recipient's address.
    pub to: Address,
    /// Amount moved, in base units.
    pub amount: Amount,
    /// Fee, in base units.
    pub fee: Amount,
    /// Sender's sequence number.
    pub nonce: Nonce,
    /// When the sender made it.
    pub timestamp_ms: TimestampMs,
    /// ed25519 signature by `from` over the signing message of the id.
    pub signature: Signature,
}

/// The bytes a transaction signature covers: a domain tag and the id.
pub(crate) fn signing_message(id: &TxId) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..16].copy_from_slice(TX_SIGNING_DOMAIN);
    m[16..].copy_from_slice(&id.0);
    m
}

impl Transaction {
    /// The fields that are signed.
    pub fn unsigned(&self) -> UnsignedTransaction {
        UnsignedTransaction {
            from: self.from,
            to: self.to,
            amount: self.amount,
            fee: self.fee,
            nonce: self.nonce,
            timestamp_ms: self.timestamp_ms,
        }
    }

    /// The transaction id (blake3 of the unsigned fields' encoding).
    pub fn id(&self) -> TxId {
        self.unsigned().id()
    }

    /// The message the signature must cover, for batched verification.
    pub fn signing_message(&self) -> [u8; 48] {
        signing_message(&self.id())
    }

    /// Checks the signature on its own (the mempool's check; blocks verify in batches).
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.from.verify(&self.signing_message(), &self.signature)
    }

    /// The canonical encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        codec::encoded_len(self)
    }
}

impl codec::WireDecode for Transaction {
    const MAX_BYTES: usize = crate::MAX_TX_BYTES;
    const WHAT: &'static str = "transaction";
}
