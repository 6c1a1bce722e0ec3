//! The genesis: what defines a network. Its hash is the network's identity.

use serde::{Deserialize, Serialize};

use crate::block::{Block, BlockHeader};
use crate::codec;
use crate::hash::{BlockHash, Hash32};
use crate::keys::{PublicKey, Signature};
use crate::merkle::merkle_root;
use crate::units::{Height, TimestampMs};

/// Shortest slot we allow: below this, clock skew between honest nodes decides who produces.
pub const MIN_SLOT_DURATION_MS: u64 = 100;
/// Longest network name; it appears in every protocol name (`/playergold/<network>/...`).
pub const MAX_NETWORK_NAME_LEN: usize = 32;
/// Most validators a genesis may name (bounds the work of checking a producer).
pub const MAX_VALIDATORS: usize = 1_024;

/// A genesis that cannot define a network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GenesisError {
    /// The name is empty, too long, or has characters other than `a-z`, `0-9`, `-`.
    #[error(
        "network name {0:?} is invalid: use 1 to 32 characters from a-z, 0-9 and '-' (for example \"devnet\")"
    )]
    BadNetworkName(String),
    /// No validators, too many, or one named twice.
    #[error("the validator set must name 1 to {MAX_VALIDATORS} distinct keys, found {0}")]
    BadValidators(String),
    /// The slot duration is below the minimum.
    #[error("slot duration {0} ms is below the minimum of {MIN_SLOT_DURATION_MS} ms")]
    SlotTooShort(u64),
}

/// The parameters that define a PlayerGold network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The network's name, e.g. `devnet`; part of every protocol name.
    pub network: String,
    /// Timestamp of the genesis block; slots count from the Unix epoch.
    pub timestamp_ms: TimestampMs,
    /// The proof-of-authority validator set, in slot order.
    pub validators: Vec<PublicKey>,
    /// Length of one production slot.
    pub slot_duration_ms: u64,
}

impl Genesis {
    /// A devnet genesis over `validators` with 1-second slots.
    pub fn devnet(
        network: &str,
        validators: Vec<PublicKey>,
        timestamp_ms: TimestampMs,
    ) -> Result<Genesis, GenesisError> {
        let g = Genesis {
            network: network.to_string(),
            timestamp_ms,
            validators,
            slot_duration_ms: 1_000,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks the network name, validator set and slot duration.
    pub fn validate(&self) -> Result<(), GenesisError> {
        let name_ok = !self.network.is_empty()
            && self.network.len() <= MAX_NETWORK_NAME_LEN
            && self
                .network
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(GenesisError::BadNetworkName(self.network.clone()));
        }
        let mut keys: Vec<_> = self.validators.iter().map(|k| k.to_bytes()).collect();
        keys.sort_unstable();
        keys.dedup();
        if self.validators.is_empty()
            || self.validators.len() > MAX_VALIDATORS
            || keys.len() != self.validators.len()
        {
            return Err(GenesisError::BadValidators(format!(
                "{} ({} distinct)",
                self.validators.len(),
                keys.len()
            )));
        }
        if self.slot_duration_ms < MIN_SLOT_DURATION_MS {
            return Err(GenesisError::SlotTooShort(self.slot_duration_ms));
        }
        Ok(())
    }

    /// The genesis block: height 0, no transactions, unsigned. Its parent field commits to the
    /// whole genesis encoding, so two genesis configs never share a genesis block.
    pub fn block(&self) -> Block {
        let header = BlockHeader {
            parent: BlockHash::from(Hash32::digest(&codec::encode(self))),
            height: Height(0),
            timestamp_ms: self.timestamp_ms,
            tx_root: merkle_root(&[]),
            producer: self.validators[0],
            signature: Signature::ZERO,
        };
        Block {
            header,
            txs: Vec::new(),
        }
    }

    /// The genesis block's hash: what identifies this network to peers.
    pub fn hash(&self) -> BlockHash {
        self.block().hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    #[test]
    fn genesis_hash_commits_to_every_field() {
        let a = Keypair::from_secret(&[1; 32]).public();
        let b = Keypair::from_secret(&[2; 32]).public();
        let g = Genesis::devnet("devnet", vec![a, b], TimestampMs(1)).expect("valid");
        let mut other = g.clone();
        other.validators.reverse();
        assert_ne!(g.hash(), other.hash());
        let mut other = g.clone();
        other.network = "testnet".into();
        assert_ne!(g.hash(), other.hash());
        assert_eq!(g.hash(), g.clone().hash());
    }

    #[test]
    fn bad_genesis_is_refused() {
        let a = Keypair::from_secret(&[1; 32]).public();
        assert!(Genesis::devnet("Dev Net", vec![a], TimestampMs(0)).is_err());
        assert!(Genesis::devnet("devnet", vec![], TimestampMs(0)).is_err());
        assert!(Genesis::devnet("devnet", vec![a, a], TimestampMs(0)).is_err());
    }
}
