//! Newtypes over bare integers, so a height can never be passed where an amount is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! int_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

int_newtype!(
    /// Height of a block: the genesis block is height 0.
    Height(u64)
);
int_newtype!(
    /// An amount of PlayerGold in base units (never a float).
    Amount(u64)
);
int_newtype!(
    /// Per-sender sequence number of a transaction.
    Nonce(u64)
);
int_newtype!(
    /// Milliseconds since the Unix epoch.
    TimestampMs(u64)
);
int_newtype!(
    /// Chain work, as defined by the consensus rule (1 per block on a proof-of-authority devnet).
    /// Cumulative work is the sum over a branch and decides fork choice first.
    Work(u128)
);

impl Height {
    /// The next height, or `None` at `u64::MAX` (a height no honest chain reaches).
    pub fn checked_next(self) -> Option<Height> {
        self.0.checked_add(1).map(Height)
    }
}

impl Work {
    /// Saturating addition: cumulative work never wraps.
    pub fn saturating_add(self, other: Work) -> Work {
        Work(self.0.saturating_add(other.0))
    }
}

impl TimestampMs {
    /// The current wall-clock time. Only adapters call this; state machines take time as input.
    pub fn now() -> TimestampMs {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        TimestampMs(ms)
    }
}
