//! The interface the network layer talks to, so another chain implementation can be plugged in.

use playergold_primitives::{
    Block, BlockHash, BlockHeader, Genesis, Height, TimestampMs, Transaction, TxId, Work,
};

use crate::chain::{BatchImport, ImportError, ImportOutcome, TxStatus};
use crate::mempool::MempoolError;
use crate::store::StoreError;

/// Where the best chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainTip {
    /// Tip hash.
    pub hash: BlockHash,
    /// Tip height.
    pub height: Height,
    /// Cumulative work up to the tip.
    pub cumulative_work: Work,
    /// The tip's timestamp.
    pub timestamp_ms: TimestampMs,
}

/// What the network layer (propagation, sync, the node's API) needs from a chain: read blocks,
/// import blocks and transactions, report the tip. Implementations are internally synchronised.
pub trait ChainBackend: Send + Sync + 'static {
    /// The network's genesis.
    fn genesis(&self) -> &Genesis;
    /// Hash of the genesis block (the network identity checked in the sync handshake).
    fn genesis_hash(&self) -> BlockHash;
    /// The best tip.
    fn tip(&self) -> ChainTip;
    /// Whether a block is stored (or waiting as an orphan).
    fn has_block(&self, hash: &BlockHash) -> bool;
    /// A stored header.
    fn header(&self, hash: &BlockHash) -> Result<Option<BlockHeader>, StoreError>;
    /// A stored block.
    fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError>;
    /// Hash of the best-chain block at `height`.
    fn hash_at(&self, height: Height) -> Option<BlockHash>;
    /// A block locator for our best chain: recent hashes densely, then exponentially sparser,
    /// ending at genesis.
    fn block_locator(&self) -> Vec<BlockHash>;
    /// Best-chain headers after the first locator hash we know, at most `max`.
    fn headers_after(
        &self,
        locator: &[BlockHash],
        max: usize,
    ) -> Result<Vec<BlockHeader>, StoreError>;
    /// Validates and imports a block (from a peer or our own producer).
    fn import_block(&self, block: Block, now: TimestampMs) -> Result<ImportOutcome, ImportError>;
    /// Validates and imports blocks in order, all stored by one durable commit (what sync uses:
    /// one fsync per batch instead of per block). Stops at the first invalid block; the valid
    /// ones before it are kept.
    fn import_blocks(&self, blocks: Vec<Block>, now: TimestampMs) -> BatchImport;
    /// Validates and adds a transaction to the mempool.
    fn submit_transaction(&self, tx: Transaction, now: TimestampMs) -> Result<TxId, MempoolError>;
    /// Validates and adds transactions to the mempool, with the same checks and errors as
    /// [`submit_transaction`](Self::submit_transaction) on each in order (a second copy of an id
    /// is `AlreadyKnown`). One result per transaction, in order. Implementations may check
    /// signatures in parallel, outside their locks.
    fn submit_transactions(
        &self,
        txs: Vec<Transaction>,
        now: TimestampMs,
    ) -> Vec<Result<TxId, MempoolError>> {
        txs.into_iter()
            .map(|tx| self.submit_transaction(tx, now))
            .collect()
    }
    /// A mempool transaction.
    fn mempool_get(&self, id: &TxId) -> Option<Transaction>;
    /// Mempool transactions, one answer per id in order. Implementations take their lock once
    /// (a compact block's rebuild looks up every transaction of the block).
    fn mempool_get_many(&self, ids: &[TxId]) -> Vec<Option<Transaction>> {
        ids.iter().map(|id| self.mempool_get(id)).collect()
    }
    /// Whether a transaction is in the mempool.
    fn mempool_contains(&self, id: &TxId) -> bool;
    /// Whether a transaction is pending, included (and where) or unknown.
    fn tx_status(&self, id: &TxId) -> Result<TxStatus, StoreError>;
}
