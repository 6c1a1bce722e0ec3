//! Who may produce a block, and how much work it adds.
//!
//! [`Consensus`] is the seam where PlayerGold's proof-of-AI will plug in. The devnet rule shipped
//! here is slot-based proof-of-authority: time is cut into slots of `slot_duration_ms`, the
//! producer of slot `s` is `validators[s mod n]`, every block adds work 1, and a block's slot must
//! be later than its parent's (so a validator cannot fill its own slot with many blocks).

use playergold_primitives::{Address, BlockHeader, Genesis, PublicKey, TimestampMs, Work};

/// Why a header breaks the consensus rule.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsensusError {
    /// The producer is not the validator of the block's slot.
    #[error("block producer {producer} is not the validator of slot {slot} (expected {expected})")]
    WrongProducer {
        /// The slot of the block's timestamp.
        slot: u64,
        /// Address of the key that signed it.
        producer: Address,
        /// Address of the slot's validator.
        expected: Address,
    },
    /// The block is in the same slot as its parent or an earlier one.
    #[error("block slot {slot} is not after its parent's slot {parent_slot}")]
    SlotNotAfterParent {
        /// The block's slot.
        slot: u64,
        /// The parent's slot.
        parent_slot: u64,
    },
}

/// A consensus rule: who may produce on a parent, and the work of a block.
pub trait Consensus: Send + Sync + 'static {
    /// Checks that `header` may extend `parent` under this rule and returns the work it adds.
    fn check_header(
        &self,
        header: &BlockHeader,
        parent: &BlockHeader,
    ) -> Result<Work, ConsensusError>;

    /// The earliest time at or after `now` at which `key` may produce a block on `parent`, if `key`
    /// produces at all under this rule.
    fn next_production_time(
        &self,
        key: &PublicKey,
        parent: &BlockHeader,
        now: TimestampMs,
    ) -> Option<TimestampMs>;
}

/// Slot-based proof-of-authority over the genesis validator set.
#[derive(Debug, Clone)]
pub struct ProofOfAuthority {
    validators: Vec<PublicKey>,
    slot_ms: u64,
}

impl ProofOfAuthority {
    /// The rule a genesis defines.
    pub fn from_genesis(genesis: &Genesis) -> ProofOfAuthority {
        ProofOfAuthority {
            validators: genesis.validators.clone(),
            // Genesis::validate guarantees at least MIN_SLOT_DURATION_MS; max(1) keeps the
            // division below defined even for an unvalidated genesis.
            slot_ms: genesis.slot_duration_ms.max(1),
        }
    }

    /// The slot a timestamp falls in.
    pub fn slot(&self, t: TimestampMs) -> u64 {
        t.0 / self.slot_ms
    }

    /// The validator of `slot`.
    pub fn producer_of(&self, slot: u64) -> PublicKey {
        self.validators[(slot % self.validators.len() as u64) as usize]
    }

    /// Whether `key` is a validator.
    pub fn is_validator(&self, key: &PublicKey) -> bool {
        self.validators.contains(key)
    }
}

impl Consensus for ProofOfAuthority {
    fn check_header(
        &self,
        header: &BlockHeader,
        parent: &BlockHeader,
    ) -> Result<Work, ConsensusError> {
        let slot = self.slot(header.timestamp_ms);
        let parent_slot = self.slot(parent.timestamp_ms);
        if slot <= parent_slot {
            return Err(ConsensusError::SlotNotAfterParent { slot, parent_slot });
        }
        let expected = self.producer_of(slot);
        if header.producer != expected {
            return Err(ConsensusError::WrongProducer {
                slot,
                producer: header.producer.address(),
                expected: expected.address(),
            });
        }
        Ok(Work(1))
    }

    fn next_production_time(
        &self,
        key: &PublicKey,
        parent: &BlockHeader,
        now: TimestampMs,
    ) -> Option<TimestampMs> {
        let index = self.validators.iter().position(|v| v == key)? as u64;
        let n = self.validators.len() as u64;
        let first = (self.slot(parent.timestamp_ms) + 1).max(self.slot(now));
        // The first slot >= `first` whose index mod n is ours.
        let offset = (index + n - first % n) % n;
        let slot = first + offset;
        // Produce at the start of the slot, or now if we are already inside it.
        Some(TimestampMs((slot * self.slot_ms).max(now.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use playergold_primitives::{Block, Height, Keypair};

    #[test]
    fn producer_rotation_and_slot_ordering() {
        let keys: Vec<Keypair> = (1..=3).map(|i| Keypair::from_secret(&[i; 32])).collect();
        let genesis = Genesis::devnet(
            "devnet",
            keys.iter().map(Keypair::public).collect(),
            TimestampMs(0),
        )
        .expect("valid genesis");
        let poa = ProofOfAuthority::from_genesis(&genesis);
        let parent = genesis.block().header;
        // Slot 4 belongs to validator 4 mod 3 = 1.
        let t = TimestampMs(4_000);
        let good = Block::build(&keys[1], parent.hash(), Height(1), t, vec![]);
        assert_eq!(poa.check_header(&good.header, &parent), Ok(Work(1)));
        let bad = Block::build(&keys[0], parent.hash(), Height(1), t, vec![]);
        assert!(matches!(
            poa.check_header(&bad.header, &parent),
            Err(ConsensusError::WrongProducer { .. })
        ));
        // Same slot as the parent is refused.
        let same = Block::build(&keys[1], good.hash(), Height(2), TimestampMs(4_500), vec![]);
        assert!(matches!(
            poa.check_header(&same.header, &good.header),
            Err(ConsensusError::SlotNotAfterParent { .. })
        ));
        // Validator 0's next slot after slot 4 is slot 6.
        assert_eq!(
            poa.next_production_time(&keys[0].public(), &good.header, TimestampMs(4_100)),
            Some(TimestampMs(6_000))
        );
        let stranger = Keypair::from_secret(&[9; 32]).public();
        assert_eq!(poa.next_production_time(&stranger, &good.header, t), None);
    }
}
