//! [`Blockchain`]: the store, the in-memory block index, the orphan pool and the mempool behind
//! one lock, implementing validation, fork choice and reorgs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Genesis, Hash32, Height, Keypair, MAX_BLOCK_TXS, SignatureError,
    TimestampMs, Transaction, TxId, Work, merkle_root, verify_batch,
};

use crate::backend::{ChainBackend, ChainTip};
use crate::consensus::{Consensus, ConsensusError};
use crate::fork_choice::{ForkKey, REPUTATION_WINDOW};
use crate::mempool::{Mempool, MempoolConfig, MempoolError, check_form};
use crate::orphans::OrphanPool;
use crate::store::{BestChainUpdate, BlockEntry, ChainStore, StoreError, StoreWriter};

/// How far ahead of our clock a block's timestamp may be.
pub const MAX_FUTURE_BLOCK_MS: u64 = 15_000;
/// How many ancestors' timestamps make the median a new block must exceed (Bitcoin's 11).
pub const MEDIAN_TIME_SPAN: usize = 11;

/// Most threads one `submit_transactions` call verifies signatures on. The call
/// blocks its caller until all are checked; four keeps a batch of 100 at about a millisecond on
/// a server without taking every core of a big one.
const MAX_VERIFY_THREADS: usize = 4;

/// Fewest signatures worth a thread of their own (a thread costs tens of microseconds to start,
/// a signature about 40).
const MIN_SIGNATURES_PER_THREAD: usize = 16;

/// Signatures remembered as checked ahead of submission ([`Blockchain::preverify`]): several
/// seconds of a fast flow. 32 bytes each, about 2 MiB when full.
pub(crate) const PREVERIFIED_CAPACITY: usize = 65_536;

/// Transactions whose exact signature was checked ahead of submission (by the relay's readers,
/// each on its own peer's frames, in parallel), so that the mempool's check is a lookup. Keyed
/// by a hash of the id and the signature: a copy of a checked transaction with another
/// signature is checked again. Bounded, oldest first out.
#[derive(Debug, Default)]
struct Preverified {
    keys: HashSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl Preverified {
    fn key(id: &TxId, tx: &Transaction) -> [u8; 32] {
        let mut bytes = [0u8; 96];
        bytes[..32].copy_from_slice(&id.0);
        bytes[32..].copy_from_slice(&tx.signature.0);
        Hash32::digest(&bytes).0
    }

    fn insert(&mut self, key: [u8; 32]) {
        if self.keys.insert(key) {
            self.order.push_back(key);
            if self.order.len() > PREVERIFIED_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.keys.remove(&old);
            }
        }
    }

    /// Whether `key` was checked; forgets it (a transaction is submitted once).
    fn take(&mut self, key: &[u8; 32]) -> bool {
        // Its place in `order` stays until it is evicted: harmless, as `keys` no longer holds it.
        self.keys.remove(key)
    }
}

/// Why a block was refused. [`ImportError::is_peer_fault`] tells the network layer whether the
/// sender is to blame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Our database failed: a local fault.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Height is not parent + 1.
    #[error("block height {got} does not follow its parent's height (expected {expected})")]
    BadHeight {
        /// Parent height + 1.
        expected: Height,
        /// The block's height.
        got: Height,
    },
    /// Timestamp not after the median of the last 11 blocks.
    #[error(
        "block timestamp {ts} is not after the median time {median} of its last {MEDIAN_TIME_SPAN} ancestors"
    )]
    TimestampTooOld {
        /// The block's timestamp.
        ts: TimestampMs,
        /// The median it must exceed.
        median: TimestampMs,
    },
    /// Timestamp too far ahead of our clock.
    #[error(
        "block timestamp {ts} is more than {MAX_FUTURE_BLOCK_MS} ms ahead of our clock ({now})"
    )]
    TimestampInFuture {
        /// The block's timestamp.
        ts: TimestampMs,
        /// Our clock.
        now: TimestampMs,
    },
    /// More transactions than a block may hold.
    #[error("block holds {0} transactions, more than {MAX_BLOCK_TXS}")]
    TooManyTxs(usize),
    /// The merkle root does not match the transactions.
    #[error("block tx_root does not match its transactions")]
    BadTxRoot,
    /// A signature (header or transaction) is invalid.
    #[error("block has an invalid signature")]
    BadSignature,
    /// The consensus rule refuses the producer.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// A transaction appears twice in the block or is already on the block's branch.
    #[error("transaction {0} is duplicated in the block or already on its branch")]
    DuplicateTx(TxId),
    /// A block at height 0 that is not our genesis.
    #[error("block at height 0 is not this network's genesis")]
    ForeignGenesis,
    /// A header presented on a block it does not name as its parent.
    #[error("header does not link to the block before it")]
    NotLinked,
}

impl ImportError {
    /// Whether the peer that sent the block is at fault (a penalty), as opposed to us.
    pub fn is_peer_fault(&self) -> bool {
        !matches!(self, ImportError::Store(_))
    }

    /// Whether the block could become valid later (a timestamp from the near future): the
    /// sender should not be punished as for an invalid block.
    pub fn is_transient(&self) -> bool {
        matches!(self, ImportError::TimestampInFuture { .. })
    }
}

/// How a tip change looks: what left and joined the best chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TipChange {
    /// The tip before.
    pub old_tip: ChainTip,
    /// The tip after.
    pub new_tip: ChainTip,
    /// Blocks that left the best chain, highest first (non-empty means a reorg).
    pub removed: Vec<BlockHash>,
    /// Blocks that joined the best chain, lowest first.
    pub added: Vec<BlockHash>,
}

impl TipChange {
    /// Whether blocks left the best chain.
    pub fn is_reorg(&self) -> bool {
        !self.removed.is_empty()
    }
}

/// The result of importing a block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportOutcome {
    /// We had it already.
    AlreadyKnown,
    /// Its parent is unknown; it waits in the orphan pool. Sync should fetch `missing`.
    Orphan {
        /// The block we need first (parent of the oldest orphan in this chain).
        missing: BlockHash,
    },
    /// Stored, with any orphans it released.
    Imported {
        /// This block and the orphans connected after it, in order.
        connected: Vec<BlockHash>,
        /// Set when the best chain changed.
        tip_change: Option<TipChange>,
    },
}

/// The result of importing several blocks in one store transaction.
#[derive(Debug)]
pub struct BatchImport {
    /// One outcome per block, in order, up to the first invalid block.
    pub outcomes: Vec<ImportOutcome>,
    /// The first block that failed and why; blocks after it were not looked at. On a failed
    /// commit, `outcomes` is empty (nothing was stored) and this holds the store error.
    pub error: Option<(BlockHash, ImportError)>,
}

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// In the mempool.
    Pending,
    /// In a best-chain block.
    Included {
        /// The block.
        block: BlockHash,
        /// Its height.
        height: Height,
    },
    /// Neither.
    Unknown,
}

/// Chain settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainConfig {
    /// Mempool bounds.
    pub mempool: MempoolConfig,
    /// How long a transaction must have been in our mempool before [`Blockchain::build_block`]
    /// includes it (0: at once). Peers rebuild a compact block from their mempools; a
    /// transaction that arrived here a moment ago is likely still on its way to some of them,
    /// and each one missing costs that peer a round trip for the block. Half a slot lets a
    /// transaction cross the network first at the cost of at most half a slot of inclusion
    /// delay (the node uses that; tests that build at once keep 0).
    pub block_min_tx_age: std::time::Duration,
}

struct State {
    index: HashMap<BlockHash, BlockEntry>,
    /// Best chain by height; `best_chain[h]` is the hash at height `h`.
    best_chain: Vec<BlockHash>,
    orphans: OrphanPool,
    mempool: Mempool,
}

impl State {
    fn tip(&self) -> ChainTip {
        // The best chain always holds at least genesis.
        let hash = *self.best_chain.last().expect("best chain holds genesis");
        self.tip_of(hash)
    }

    fn tip_of(&self, hash: BlockHash) -> ChainTip {
        let e = &self.index[&hash];
        ChainTip {
            hash,
            height: e.height,
            cumulative_work: e.cumulative_work,
            timestamp_ms: e.timestamp_ms,
        }
    }

    fn is_on_best(&self, hash: &BlockHash) -> bool {
        self.index
            .get(hash)
            .is_some_and(|e| self.best_chain.get(e.height.0 as usize) == Some(hash))
    }

    fn median_time(&self, parent: BlockHash) -> TimestampMs {
        let mut times = Vec::with_capacity(MEDIAN_TIME_SPAN);
        let mut h = parent;
        while times.len() < MEDIAN_TIME_SPAN {
            let Some(e) = self.index.get(&h) else { break };
            times.push(e.timestamp_ms);
            if e.height.0 == 0 {
                break;
            }
            h = e.parent;
        }
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Blocks `producer` made among the `REPUTATION_WINDOW` blocks ending at `from`.
    fn producer_reputation(&self, entry: &BlockEntry) -> u64 {
        let mut count = 0;
        let mut h = entry.parent;
        for _ in 0..REPUTATION_WINDOW {
            let Some(e) = self.index.get(&h) else { break };
            if e.producer == entry.producer && e.height.0 > 0 {
                count += 1;
            }
            if e.height.0 == 0 {
                break;
            }
            h = e.parent;
        }
        count
    }

    /// Whether a new tip `(hash, entry)` beats the current best.
    fn beats_best(&self, hash: BlockHash, entry: &BlockEntry) -> bool {
        let best_hash = *self.best_chain.last().expect("best chain holds genesis");
        let best = &self.index[&best_hash];
        let key = |hash, e: &BlockEntry, reputation| ForkKey {
            work: e.cumulative_work,
            timestamp_ms: e.timestamp_ms,
            producer_reputation: reputation,
            hash,
        };
        let (new, old) = (key(hash, entry, 0), key(best_hash, best, 0));
        if (new.work, new.timestamp_ms) != (old.work, old.timestamp_ms) {
            return new > old;
        }
        // Exact tie in work and time: the chain-derived producer reputation decides.
        key(hash, entry, self.producer_reputation(entry))
            > key(best_hash, best, self.producer_reputation(best))
    }
}

/// A chain: store + index + orphans + mempool, behind one lock. Implements [`ChainBackend`].
pub struct Blockchain {
    genesis: Genesis,
    genesis_hash: BlockHash,
    consensus: Arc<dyn Consensus>,
    store: ChainStore,
    state: Mutex<State>,
    /// The best tip as of the last change, set under `state`'s lock: [`ChainBackend::tip`]
    /// answers without waiting for an import in progress (which may run at a low CPU
    /// priority, see the relay's import thread).
    tip: Mutex<ChainTip>,
    block_min_tx_age: std::time::Duration,
    preverified: Mutex<Preverified>,
}

impl std::fmt::Debug for Blockchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockchain")
            .field("network", &self.genesis.network)
            .field("tip", &*self.tip.lock())
            .finish()
    }
}

impl Blockchain {
    /// Opens (or creates) the chain database at `path` for `genesis`.
    pub fn open(
        path: &Path,
        genesis: Genesis,
        consensus: Arc<dyn Consensus>,
        config: ChainConfig,
    ) -> Result<Blockchain, StoreError> {
        let genesis_block = genesis.block();
        let store = ChainStore::open(path, &genesis_block)?;
        let index: HashMap<_, _> = store.load_entries()?.into_iter().collect();
        let best_chain = store.load_best_chain()?;
        let best = store.best()?;
        if best_chain.last() != Some(&best) || best_chain.iter().any(|h| !index.contains_key(h)) {
            return Err(StoreError::Corrupt(
                "best chain index disagrees with the stored tip".into(),
            ));
        }
        let state = State {
            index,
            best_chain,
            orphans: OrphanPool::new(),
            mempool: Mempool::new(config.mempool),
        };
        Ok(Blockchain {
            genesis_hash: genesis_block.hash(),
            genesis,
            consensus,
            store,
            block_min_tx_age: config.block_min_tx_age,
            preverified: Mutex::new(Preverified::default()),
            tip: Mutex::new(state.tip()),
            state: Mutex::new(state),
        })
    }

    /// Checks the signatures of `txs` not in the mempool yet (all of them while an import holds
    /// the chain: the filter is not worth waiting for), in one batch on this thread, and
    /// remembers the valid ones so that their submission does not check them again. Meant for
    /// the threads that read peers' frames: each checks its own peer's transactions, in
    /// parallel, before the one task that submits them sees them. Returns how many verified.
    pub fn preverify(&self, txs: &[Transaction]) -> usize {
        // Skipping what the mempool holds saves work, so it is not worth waiting for: while an
        // import holds the chain (at a low priority, perhaps), every signature is checked.
        let fresh: Vec<(TxId, &Transaction)> = {
            let st = self.state.try_lock();
            txs.iter()
                .map(|tx| (tx.id(), tx))
                .filter(|(id, _)| !st.as_ref().is_some_and(|st| st.mempool.contains(id)))
                .collect()
        };
        let refs: Vec<&Transaction> = fresh.iter().map(|(_, tx)| *tx).collect();
        let valid = verify_chunk(&refs);
        let keys: Vec<[u8; 32]> = fresh
            .iter()
            .zip(valid)
            .filter(|(_, ok)| *ok)
            .map(|((id, tx), _)| Preverified::key(id, tx))
            .collect();
        let mut cache = self.preverified.lock();
        for key in &keys {
            cache.insert(*key);
        }
        keys.len()
    }

    /// The underlying store (for the network layer's auxiliary records).
    pub fn store(&self) -> &ChainStore {
        &self.store
    }

    /// The consensus rule.
    pub fn consensus(&self) -> &Arc<dyn Consensus> {
        &self.consensus
    }

    /// Number of mempool transactions.
    pub fn mempool_len(&self) -> usize {
        self.state.lock().mempool.len()
    }

    /// Number of orphan blocks waiting for a parent.
    pub fn orphan_count(&self) -> usize {
        self.state.lock().orphans.len()
    }

    /// When `key` may next produce on the current tip, if it is a producer at all.
    pub fn next_production_time(&self, key: &Keypair, now: TimestampMs) -> Option<TimestampMs> {
        // After any import in progress, as `build_block` will see the chain.
        let tip = self.state.lock().tip();
        let parent = self.store.header(&tip.hash).ok()??;
        self.consensus
            .next_production_time(&key.public(), &parent, now)
    }

    /// The fork-choice key of a stored block, as fork choice computes it.
    pub fn fork_key(&self, hash: &BlockHash) -> Option<ForkKey> {
        let st = self.state.lock();
        let e = st.index.get(hash)?;
        Some(ForkKey {
            work: e.cumulative_work,
            timestamp_ms: e.timestamp_ms,
            producer_reputation: st.producer_reputation(e),
            hash: *hash,
        })
    }

    /// The checks of a header against its parent that need neither the body nor the chain's
    /// clock rules (median time, future limit): it names `parent` and follows its height, the
    /// consensus rule (producer, slot) holds, and the producer's signature verifies. Relay runs
    /// this before forwarding a compact block, sync before fetching bodies; import runs the
    /// same rules and more.
    pub fn check_header_on(
        &self,
        header: &BlockHeader,
        parent: &BlockHeader,
    ) -> Result<Work, ImportError> {
        if header.parent != parent.hash() {
            return Err(ImportError::NotLinked);
        }
        let expected = Height(parent.height.0.saturating_add(1));
        if header.height != expected {
            return Err(ImportError::BadHeight {
                expected,
                got: header.height,
            });
        }
        let work = self.consensus.check_header(header, parent)?;
        header
            .verify_signature()
            .map_err(|_| ImportError::BadSignature)?;
        Ok(work)
    }

    /// Builds and signs a block on the current tip at `timestamp` with the highest-fee mempool
    /// transactions (at most `max_txs`). The caller imports it.
    pub fn build_block(&self, key: &Keypair, timestamp: TimestampMs, max_txs: usize) -> Block {
        let st = self.state.lock();
        let tip = st.tip();
        let age = u64::try_from(self.block_min_tx_age.as_millis()).unwrap_or(u64::MAX);
        let txs = st.mempool.select_arrived_by(
            max_txs.min(MAX_BLOCK_TXS),
            // Leave room for the header within the block byte limit.
            playergold_primitives::MAX_BLOCK_BYTES - playergold_primitives::MAX_HEADER_BYTES,
            TimestampMs(timestamp.0.saturating_sub(age)),
        );
        Block::build(key, tip.hash, Height(tip.height.0 + 1), timestamp, txs)
    }

    fn parent_header(&self, w: &StoreWriter, block: &Block) -> Result<BlockHeader, ImportError> {
        w.header(&block.header.parent)?
            .ok_or_else(|| StoreError::Corrupt("indexed parent has no header".into()).into())
    }

    /// Full validation of `block` against its (known) parent. Returns the tx ids and the work.
    fn validate(
        &self,
        st: &State,
        w: &StoreWriter,
        block: &Block,
        now: TimestampMs,
    ) -> Result<(Vec<TxId>, Work), ImportError> {
        let header = &block.header;
        let parent = &st.index[&header.parent];
        let expected = Height(parent.height.0 + 1);
        if header.height != expected {
            return Err(ImportError::BadHeight {
                expected,
                got: header.height,
            });
        }
        let median = st.median_time(header.parent);
        if header.timestamp_ms <= median {
            return Err(ImportError::TimestampTooOld {
                ts: header.timestamp_ms,
                median,
            });
        }
        if header.timestamp_ms.0 > now.0.saturating_add(MAX_FUTURE_BLOCK_MS) {
            return Err(ImportError::TimestampInFuture {
                ts: header.timestamp_ms,
                now,
            });
        }
        if block.txs.len() > MAX_BLOCK_TXS {
            return Err(ImportError::TooManyTxs(block.txs.len()));
        }
        let work = self
            .consensus
            .check_header(header, &self.parent_header(w, block)?)?;
        let ids = block.tx_ids();
        if merkle_root(&ids) != header.tx_root {
            return Err(ImportError::BadTxRoot);
        }
        self.check_no_duplicates(st, w, block, &ids)?;
        Self::verify_block_signatures(st, block).map_err(|_| ImportError::BadSignature)?;
        Ok((ids, work))
    }

    /// Verifies the header's signature and those of the transactions not already in the mempool
    /// as they are, in one batch. A transaction identical to a mempool entry (signature included:
    /// the id does not cover it) passed the same ZIP-215 check on entry (single and batch checks
    /// accept the same signatures), so checking it again could only cost time: this is the signature cache that lets a
    /// block rebuilt from the mempool import without verifying its transactions twice.
    fn verify_block_signatures(st: &State, block: &Block) -> Result<(), SignatureError> {
        let unverified: Vec<&Transaction> = block
            .txs
            .iter()
            .filter(|tx| st.mempool.get(&tx.id()) != Some(*tx))
            .collect();
        let mut msgs: Vec<[u8; 48]> = Vec::with_capacity(unverified.len() + 1);
        let mut sigs = Vec::with_capacity(unverified.len() + 1);
        let mut keys = Vec::with_capacity(unverified.len() + 1);
        msgs.push(block.header.signing_message());
        sigs.push(block.header.signature);
        keys.push(block.header.producer);
        for tx in unverified {
            msgs.push(tx.signing_message());
            sigs.push(tx.signature);
            keys.push(tx.from);
        }
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        verify_batch(&refs, &sigs, &keys)
    }

    /// No tx twice in the block, and none already on the block's branch.
    fn check_no_duplicates(
        &self,
        st: &State,
        w: &StoreWriter,
        block: &Block,
        ids: &[TxId],
    ) -> Result<(), ImportError> {
        let mut seen = HashSet::with_capacity(ids.len());
        for id in ids {
            if !seen.insert(*id) {
                return Err(ImportError::DuplicateTx(*id));
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        // Walk the side branch (if any) down to the best chain, collecting its txs.
        let mut fork = block.header.parent;
        while !st.is_on_best(&fork) {
            let body = w.body(&fork)?;
            if let Some(t) = body.iter().map(Transaction::id).find(|t| seen.contains(t)) {
                return Err(ImportError::DuplicateTx(t));
            }
            fork = st.index[&fork].parent;
        }
        let fork_height = st.index[&fork].height;
        for (id, in_block) in w.txs_in_best_chain(ids)? {
            if st
                .index
                .get(&in_block)
                .is_some_and(|e| e.height <= fork_height)
            {
                return Err(ImportError::DuplicateTx(id));
            }
        }
        Ok(())
    }

    /// Validates, stores and (if it wins fork choice) adopts one block whose parent is known.
    fn connect(
        &self,
        st: &mut State,
        w: &mut StoreWriter,
        block: &Block,
        hash: BlockHash,
        now: TimestampMs,
    ) -> Result<Option<TipChange>, ImportError> {
        let (ids, work) = self.validate(st, w, block, now)?;
        let parent = &st.index[&block.header.parent];
        let entry = BlockEntry {
            parent: block.header.parent,
            height: block.header.height,
            timestamp_ms: block.header.timestamp_ms,
            producer: block.header.producer,
            cumulative_work: parent.cumulative_work.saturating_add(work),
        };
        if !st.beats_best(hash, &entry) {
            w.put_block(block, &hash, &entry, &BestChainUpdate::default())?;
            st.index.insert(hash, entry);
            return Ok(None);
        }
        let old_tip = st.tip();
        // The new branch, from just above the fork point up to the new block.
        let mut branch = vec![hash];
        let mut fork = block.header.parent;
        while !st.is_on_best(&fork) {
            branch.push(fork);
            fork = st.index[&fork].parent;
        }
        branch.reverse();
        let fork_height = st.index[&fork].height.0 as usize;
        let removed_hashes: Vec<BlockHash> = st.best_chain[fork_height + 1..]
            .iter()
            .rev()
            .copied()
            .collect();
        let mut removed_bodies = Vec::with_capacity(removed_hashes.len());
        for h in &removed_hashes {
            let txs = w.body(h)?;
            let ids: Vec<TxId> = txs.iter().map(Transaction::id).collect();
            removed_bodies.push((st.index[h].height, txs, ids));
        }
        let mut added_ids = Vec::with_capacity(branch.len());
        for h in &branch[..branch.len() - 1] {
            let txs = w.body(h)?;
            added_ids.push((
                *h,
                st.index[h].height,
                txs.iter().map(Transaction::id).collect(),
            ));
        }
        added_ids.push((hash, entry.height, ids));
        let update = BestChainUpdate {
            removed: removed_bodies
                .iter()
                .map(|(height, _, ids)| (*height, ids.as_slice()))
                .collect(),
            added: added_ids
                .iter()
                .map(|(h, height, ids): &(BlockHash, Height, Vec<TxId>)| {
                    (*h, *height, ids.as_slice())
                })
                .collect(),
            new_best: Some(hash),
        };
        w.put_block(block, &hash, &entry, &update)?;
        // Mirror it in memory; if the commit later fails, `reload` puts memory back in step.
        st.index.insert(hash, entry);
        st.best_chain.truncate(fork_height + 1);
        st.best_chain.extend(branch.iter().copied());
        let included: HashSet<TxId> = added_ids
            .iter()
            .flat_map(|(_, _, ids)| ids.iter().copied())
            .collect();
        for id in &included {
            st.mempool.remove(id);
        }
        let returned: Vec<Transaction> = removed_bodies
            .into_iter()
            .flat_map(|(_, txs, _)| txs)
            .filter(|t| !included.contains(&t.id()))
            .collect();
        st.mempool.reinsert(returned);
        Ok(Some(TipChange {
            old_tip,
            new_tip: st.tip(),
            removed: removed_hashes,
            added: branch,
        }))
    }

    /// Imports one block into an open write transaction, then connects the orphans it releases.
    fn import_one(
        &self,
        st: &mut State,
        w: &mut StoreWriter,
        block: Block,
        hash: BlockHash,
        now: TimestampMs,
    ) -> Result<ImportOutcome, ImportError> {
        if st.index.contains_key(&hash) {
            return Ok(ImportOutcome::AlreadyKnown);
        }
        if block.header.height.0 == 0 {
            return Err(ImportError::ForeignGenesis);
        }
        if !st.index.contains_key(&block.header.parent) {
            let bytes = playergold_primitives::codec::encoded_len(&block);
            st.orphans.insert(block, bytes, now);
            let missing = st.orphans.root_of(&hash).unwrap_or_default();
            return Ok(ImportOutcome::Orphan { missing });
        }
        let mut tip_change = self.connect(st, w, &block, hash, now)?;
        let mut connected = vec![hash];
        // Connect orphans waiting on what we just stored, depth first.
        let mut frontier = vec![hash];
        while let Some(parent) = frontier.pop() {
            for child in st.orphans.take_children(&parent) {
                let child_hash = child.hash();
                match self.connect(st, w, &child, child_hash, now) {
                    Ok(change) => {
                        connected.push(child_hash);
                        frontier.push(child_hash);
                        if let Some(c) = change {
                            Self::merge_tip_change(&mut tip_change, c);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(block = %child_hash, error = %e, "orphan failed validation");
                    }
                }
            }
        }
        Ok(ImportOutcome::Imported {
            connected,
            tip_change,
        })
    }

    /// Rebuilds the in-memory index and best chain from the store.
    fn reload(&self, st: &mut State) -> Result<(), StoreError> {
        st.index = self.store.load_entries()?.into_iter().collect();
        st.best_chain = self.store.load_best_chain()?;
        Ok(())
    }

    fn merge_tip_change(total: &mut Option<TipChange>, next: TipChange) {
        match total {
            None => *total = Some(next),
            Some(t) => {
                // Blocks added earlier in this call and now removed cancel out.
                for r in &next.removed {
                    if let Some(pos) = t.added.iter().position(|a| a == r) {
                        t.added.remove(pos);
                    } else {
                        t.removed.push(*r);
                    }
                }
                t.added.extend(next.added);
                t.new_tip = next.new_tip;
            }
        }
    }
}

impl ChainBackend for Blockchain {
    fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    fn genesis_hash(&self) -> BlockHash {
        self.genesis_hash
    }

    fn tip(&self) -> ChainTip {
        *self.tip.lock()
    }

    fn has_block(&self, hash: &BlockHash) -> bool {
        let st = self.state.lock();
        st.index.contains_key(hash) || st.orphans.contains(hash)
    }

    fn header(&self, hash: &BlockHash) -> Result<Option<BlockHeader>, StoreError> {
        self.store.header(hash)
    }

    fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        self.store.block(hash)
    }

    fn hash_at(&self, height: Height) -> Option<BlockHash> {
        self.state.lock().best_chain.get(height.0 as usize).copied()
    }

    fn block_locator(&self) -> Vec<BlockHash> {
        let st = self.state.lock();
        let mut out = Vec::new();
        let mut height = st.best_chain.len() - 1;
        let mut step = 1;
        loop {
            out.push(st.best_chain[height]);
            if height == 0 {
                break;
            }
            if out.len() >= 10 {
                step *= 2;
            }
            height = height.saturating_sub(step);
        }
        out
    }

    fn headers_after(
        &self,
        locator: &[BlockHash],
        max: usize,
    ) -> Result<Vec<BlockHeader>, StoreError> {
        let hashes: Vec<BlockHash> = {
            let st = self.state.lock();
            let start = locator
                .iter()
                .find(|h| st.is_on_best(h))
                .map(|h| st.index[h].height.0 as usize + 1)
                .unwrap_or(0);
            st.best_chain
                .iter()
                .skip(start)
                .take(max)
                .copied()
                .collect()
        };
        let mut out = Vec::with_capacity(hashes.len());
        for h in &hashes {
            match self.store.header(h)? {
                Some(header) => out.push(header),
                None => return Err(StoreError::Corrupt(format!("best block {h} has no header"))),
            }
        }
        Ok(out)
    }

    fn import_block(&self, block: Block, now: TimestampMs) -> Result<ImportOutcome, ImportError> {
        let mut batch = self.import_blocks(vec![block], now);
        match batch.error {
            Some((_, e)) => Err(e),
            // One block in, one outcome out.
            None => Ok(batch
                .outcomes
                .pop()
                .expect("one outcome per imported block")),
        }
    }

    fn import_blocks(&self, blocks: Vec<Block>, now: TimestampMs) -> BatchImport {
        let mut st = self.state.lock();
        let mut outcomes = Vec::with_capacity(blocks.len());
        let mut writer = match self.store.writer() {
            Ok(w) => w,
            Err(e) => {
                let hash = blocks.first().map(Block::hash).unwrap_or_default();
                return BatchImport {
                    outcomes,
                    error: Some((hash, e.into())),
                };
            }
        };
        let mut error = None;
        let mut wrote = false;
        for block in blocks {
            let hash = block.hash();
            match self.import_one(&mut st, &mut writer, block, hash, now) {
                Ok(outcome) => {
                    wrote |= matches!(outcome, ImportOutcome::Imported { .. });
                    outcomes.push(outcome);
                }
                Err(e) => {
                    error = Some((hash, e));
                    break;
                }
            }
        }
        if wrote && let Err(e) = writer.commit() {
            // Memory ran ahead of the failed commit: read the truth back from disk.
            if let Err(reload) = self.reload(&mut st) {
                tracing::error!(error = %reload, "chain state reload after a failed commit failed");
            }
            let hash = outcomes
                .iter()
                .find_map(|o| match o {
                    ImportOutcome::Imported { connected, .. } => connected.first().copied(),
                    _ => None,
                })
                .unwrap_or_default();
            outcomes.clear();
            error = Some((hash, e.into()));
        }
        *self.tip.lock() = st.tip();
        BatchImport { outcomes, error }
    }

    fn submit_transaction(&self, tx: Transaction, now: TimestampMs) -> Result<TxId, MempoolError> {
        let id = tx.id();
        if self.store.tx_block(&id).ok().flatten().is_some() {
            return Err(MempoolError::AlreadyIncluded(id));
        }
        self.state.lock().mempool.insert(tx, now)?;
        Ok(id)
    }

    fn submit_transactions(
        &self,
        txs: Vec<Transaction>,
        now: TimestampMs,
    ) -> Vec<Result<TxId, MempoolError>> {
        let ids: Vec<TxId> = txs.iter().map(Transaction::id).collect();
        // One store read for the batch (as the single path, a failed read counts as "not
        // included": the import path catches a duplicate anyway).
        let included: HashSet<TxId> = self
            .store
            .txs_in_best_chain(&ids)
            .map(|found| found.into_iter().map(|(id, _)| id).collect())
            .unwrap_or_default();
        // What needs no lock: inclusion, form, and the signatures (batched: see
        // `verify_parallel`), all before the lock is taken.
        let checked: Vec<Result<usize, MempoolError>> = txs
            .iter()
            .zip(&ids)
            .map(|(tx, id)| {
                if included.contains(id) {
                    return Err(MempoolError::AlreadyIncluded(*id));
                }
                check_form(tx, now)
            })
            .collect();
        // Signatures checked ahead (`preverify`) are not checked again.
        let known: Vec<bool> = {
            let mut cache = self.preverified.lock();
            txs.iter()
                .zip(&ids)
                .zip(&checked)
                .map(|((tx, id), c)| c.is_ok() && cache.take(&Preverified::key(id, tx)))
                .collect()
        };
        let to_verify: Vec<&Transaction> = txs
            .iter()
            .zip(&checked)
            .zip(&known)
            .filter(|((_, c), known)| c.is_ok() && !**known)
            .map(|((tx, _), _)| tx)
            .collect();
        let mut checks = verify_parallel(&to_verify).into_iter();
        let signed: Vec<Result<usize, MempoolError>> = checked
            .into_iter()
            .zip(&ids)
            .zip(known)
            .map(|((c, id), known)| {
                let bytes = c?;
                // Checked ahead, or the batch's next verdict: one per transaction that passed the
                // form checks and was not checked ahead, in order.
                if known || checks.next() == Some(true) {
                    Ok(bytes)
                } else {
                    Err(MempoolError::BadSignature(*id))
                }
            })
            .collect();
        // One lock for the whole batch; in order, so that a second copy of an id is
        // `AlreadyKnown` exactly as one-by-one submission makes it.
        let mut st = self.state.lock();
        txs.into_iter()
            .zip(ids)
            .zip(signed)
            .map(|((tx, id), signed)| match signed {
                Err(e @ MempoolError::AlreadyIncluded(_)) => Err(e),
                // The single path reports a known id before looking at form or signature.
                _ if st.mempool.contains(&id) => Err(MempoolError::AlreadyKnown(id)),
                Err(e) => Err(e),
                Ok(bytes) => st.mempool.insert_checked(id, tx, bytes, now).map(|_| id),
            })
            .collect()
    }

    fn mempool_get(&self, id: &TxId) -> Option<Transaction> {
        self.state.lock().mempool.get(id).cloned()
    }

    fn mempool_get_many(&self, ids: &[TxId]) -> Vec<Option<Transaction>> {
        let st = self.state.lock();
        ids.iter().map(|id| st.mempool.get(id).cloned()).collect()
    }

    fn mempool_contains(&self, id: &TxId) -> bool {
        self.state.lock().mempool.contains(id)
    }

    fn tx_status(&self, id: &TxId) -> Result<TxStatus, StoreError> {
        // Under the state lock: an import holds it from mempool removal through its commit, so
        // a transaction is never seen as neither pending nor included.
        let st = self.state.lock();
        if st.mempool.contains(id) {
            return Ok(TxStatus::Pending);
        }
        let Some(block) = self.store.tx_block(id)? else {
            return Ok(TxStatus::Unknown);
        };
        let height =
            st.index.get(&block).map(|e| e.height).ok_or_else(|| {
                StoreError::Corrupt(format!("tx index names unknown block {block}"))
            })?;
        Ok(TxStatus::Included { block, height })
    }
}

/// Signature checks of `txs`, one verdict each: the same ZIP-215 rule as
/// `Transaction::verify` (the mempool's check) and as block imports, batched (about twice as
/// fast per signature) and spread over up to [`MAX_VERIFY_THREADS`] threads. A batch that fails
/// is checked one by one to find the bad signatures: a peer that mixes forgeries into its batches
/// only costs us the single-check rate, never a wrong verdict.
fn verify_parallel(txs: &[&Transaction]) -> Vec<bool> {
    // Asked once: the answer reads cgroup files, a cost per call far above a signature's.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = cores
        .min(MAX_VERIFY_THREADS)
        .min(txs.len() / MIN_SIGNATURES_PER_THREAD)
        .max(1);
    if threads == 1 {
        return verify_chunk(txs);
    }
    let per_thread = txs.len().div_ceil(threads);
    let mut chunks = txs.chunks(per_thread);
    // The calling thread checks the first chunk itself: one thread fewer to start per batch.
    let first = chunks.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .map(|chunk| (chunk.len(), scope.spawn(move || verify_chunk(chunk))))
            .collect();
        let mut out = verify_chunk(first);
        for (len, handle) in handles {
            // A verifying thread cannot panic (`verify` returns errors); if one did, its
            // transactions count as unverified rather than taking the node down.
            out.extend(handle.join().unwrap_or_else(|_| vec![false; len]));
        }
        out
    })
}

/// One batch check of `txs`; one by one if it fails.
fn verify_chunk(txs: &[&Transaction]) -> Vec<bool> {
    let ids: Vec<[u8; 48]> = txs.iter().map(|tx| tx.signing_message()).collect();
    let msgs: Vec<&[u8]> = ids.iter().map(|m| m.as_slice()).collect();
    let sigs: Vec<_> = txs.iter().map(|tx| tx.signature).collect();
    let keys: Vec<_> = txs.iter().map(|tx| tx.from).collect();
    if playergold_primitives::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return vec![true; txs.len()];
    }
    txs.iter().map(|tx| tx.verify().is_ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_checked_ahead_stay_bounded_and_are_taken_once() {
        let mut cache = Preverified::default();
        let key = |i: usize| Hash32::digest(&i.to_le_bytes()).0;
        for i in 0..PREVERIFIED_CAPACITY + 100 {
            cache.insert(key(i));
        }
        assert_eq!(cache.keys.len(), PREVERIFIED_CAPACITY);
        assert_eq!(cache.order.len(), PREVERIFIED_CAPACITY);
        assert!(!cache.take(&key(0)), "the oldest went first");
        let newest = key(PREVERIFIED_CAPACITY + 99);
        assert!(cache.take(&newest));
        assert!(!cache.take(&newest), "taken once");
    }
}
