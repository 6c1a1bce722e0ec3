//! Fork choice: a total order over chain tips that every honest node computes identically.
//!
//! A tip ranks above another when it has, in this order:
//! 1. more cumulative work;
//! 2. an earlier timestamp;
//! 3. a producer with a higher chain-derived reputation: the number of blocks that producer made
//!    in the `REPUTATION_WINDOW` blocks ending at the tip's parent. This is read from the chain
//!    itself, never from a node's local peer scores, so every node agrees. (Counting on the
//!    pairwise common ancestor's branch would make the order depend on which two tips are
//!    compared, and so not transitive for three or more tips; a per-tip key is.)
//! 4. a lower block hash.
//!
//! Each tip maps to a [`ForkKey`] and tips compare by key, which makes the order total,
//! antisymmetric and transitive by construction (hashes differ between distinct blocks).

use std::cmp::{Ordering, Reverse};

use playergold_primitives::{BlockHash, TimestampMs, Work};

/// How many blocks back the producer reputation counts. 1,024 blocks is about 17 minutes of
/// one-second slots: long enough to reflect a producer's record, short enough to compute cheaply
/// on the rare exact ties in work and timestamp.
pub const REPUTATION_WINDOW: usize = 1_024;

/// The fork-choice rank of a tip; the greatest key is the best tip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForkKey {
    /// Cumulative work of the tip.
    pub work: Work,
    /// The tip's timestamp.
    pub timestamp_ms: TimestampMs,
    /// Blocks by the tip's producer in the window ending at the tip's parent.
    pub producer_reputation: u64,
    /// The tip's hash.
    pub hash: BlockHash,
}

impl ForkKey {
    fn rank(&self) -> (Work, Reverse<TimestampMs>, u64, Reverse<BlockHash>) {
        (
            self.work,
            Reverse(self.timestamp_ms),
            self.producer_reputation,
            Reverse(self.hash),
        )
    }
}

impl Ord for ForkKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl PartialOrd for ForkKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(work: u128, ts: u64, rep: u64, hash: u8) -> ForkKey {
        ForkKey {
            work: Work(work),
            timestamp_ms: TimestampMs(ts),
            producer_reputation: rep,
            hash: BlockHash([hash; 32]),
        }
    }

    #[test]
    fn criteria_apply_in_order() {
        assert!(key(2, 9, 0, 9) > key(1, 0, 9, 0), "work first");
        assert!(
            key(1, 1, 0, 9) > key(1, 2, 9, 0),
            "earlier timestamp second"
        );
        assert!(key(1, 1, 5, 9) > key(1, 1, 4, 0), "reputation third");
        assert!(key(1, 1, 5, 1) > key(1, 1, 5, 2), "lower hash last");
    }
}
