//! PlayerGold chain: where blocks and transactions go after the network hands them over.
//!
//! This crate owns the chain database (redb), block validation, the consensus seam, fork choice,
//! reorgs, the orphan pool and the mempool. It knows nothing of peers or sockets: the network layer
//! talks to it through the [`ChainBackend`] trait, and passes the current time in.
//!
//! ```text
//!  network ──► ChainBackend::import_block(block, now)
//!                 │ parent unknown ──► OrphanPool (bounded) ──┐ released when the parent connects
//!                 ▼                                           │
//!              validate: height, median time, future limit, consensus (producer, work),
//!                        merkle root, duplicates on the branch, batched signatures
//!                 ▼
//!              fork choice (work > earlier time > chain-derived producer reputation > lower hash)
//!                 ▼
//!              ChainStore: one redb transaction = block + best-chain/tx index changes + tip
//!                 ▼
//!              Mempool: drop included txs, take back txs of reorged-out blocks
//!
//!  network ──► ChainBackend::submit_transaction(tx, now) ──► Mempool (bounded, fee-ordered)
//! ```

mod backend;
mod chain;
mod consensus;
mod fork_choice;
mod mempool;
mod orphans;
mod store;

pub use backend::{ChainBackend, ChainTip};
pub use chain::{
    BatchImport, Blockchain, ChainConfig, ImportError, ImportOutcome, MAX_FUTURE_BLOCK_MS,
    MEDIAN_TIME_SPAN, TipChange, TxStatus,
};
pub use consensus::{Consensus, ConsensusError, ProofOfAuthority};
pub use fork_choice::{ForkKey, REPUTATION_WINDOW};
pub use mempool::{MAX_TX_FUTURE_MS, Mempool, MempoolConfig, MempoolError};
pub use orphans::{MAX_ORPHAN_BYTES, MAX_ORPHANS, ORPHAN_TTL_MS, OrphanPool};
pub use store::{BlockEntry, ChainStore, StoreError};
