//! [`ChainHost`]: the relay engine's view of the chain, over [`Blockchain`].
//!
//! Every item the engine relays passes through here first: transactions through the mempool's
//! checks (form, size, signature), headers through linkage, height, the consensus producer rule
//! and the producer's signature, blocks through full import. Chain errors become verdicts that
//! say whose fault a refusal is: the sender's (`Invalid`, a penalty) or ours or nobody's
//! (`Refused`/`Known`, no penalty).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use playergold_chain::{
    Blockchain, ChainBackend, ImportError, ImportOutcome, MempoolError, TxStatus,
};
use playergold_primitives::{Block, BlockHash, BlockHeader, TimestampMs, Transaction, TxId};
use playergold_protocol::relay::{BlockVerdict, HeaderVerdict, RelayHost, TxVerdict};

use super::import::ImportThread;

/// Mempool transactions remembered for compact-block rebuilding: the chain's default mempool
/// size, so every transaction the pool can hold is found. Older ids are forgotten first; one that
/// was forgotten is fetched with the block's missing transactions instead.
pub(crate) const MAX_TRACKED_TXS: usize = 50_000;

/// What the relay makes of a mempool refusal.
pub(crate) fn tx_verdict(error: &MempoolError) -> TxVerdict {
    match error {
        MempoolError::AlreadyKnown(_) | MempoolError::AlreadyIncluded(_) => TxVerdict::Known,
        // Only the sender can have made these.
        MempoolError::BadSignature(_) | MempoolError::TooLarge(_) => TxVerdict::Invalid,
        // Clock skew or a full pool: valid, just not for us now.
        MempoolError::FromTheFuture { .. } | MempoolError::FeeTooLow { .. } => TxVerdict::Refused,
        // A reason added later: never punish a peer for what we do not understand.
        _ => TxVerdict::Refused,
    }
}

/// What the relay makes of an import failure: the sender's fault unless our store failed or the
/// block may become valid shortly (a timestamp slightly ahead of our clock).
pub(crate) fn block_verdict(error: &ImportError) -> BlockVerdict {
    if error.is_peer_fault() && !error.is_transient() {
        BlockVerdict::Invalid
    } else {
        BlockVerdict::Refused
    }
}

/// Ids of transactions we put in the mempool, oldest first, bounded by [`MAX_TRACKED_TXS`].
#[derive(Debug, Default)]
struct Tracked {
    /// Id → insertion sequence number (an id re-added gets a new one).
    ids: HashMap<TxId, u64>,
    order: VecDeque<(TxId, u64)>,
    next: u64,
}

impl Tracked {
    fn insert(&mut self, id: TxId) {
        self.next += 1;
        self.ids.insert(id, self.next);
        self.order.push_back((id, self.next));
        while self.ids.len() > MAX_TRACKED_TXS {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.ids.get(&old) == Some(&seq) {
                self.ids.remove(&old);
            }
        }
        // Entries of removed or re-added ids linger in `order`; drop them once they dominate.
        if self.order.len() > 2 * MAX_TRACKED_TXS {
            let ids = &self.ids;
            self.order.retain(|(id, seq)| ids.get(id) == Some(seq));
        }
    }

    fn remove(&mut self, id: &TxId) {
        self.ids.remove(id);
    }
}

/// The engine's host over the chain.
#[derive(Debug)]
pub(crate) struct ChainHost {
    chain: Arc<Blockchain>,
    /// Where blocks are imported (see [`ImportThread`]).
    imports: ImportThread,
    tracked: Tracked,
    last_tx_error: Option<String>,
    last_block_error: Option<String>,
}

impl ChainHost {
    pub(crate) fn new(chain: Arc<Blockchain>) -> ChainHost {
        ChainHost {
            chain,
            imports: ImportThread::spawn(),
            tracked: Tracked::default(),
            last_tx_error: None,
            last_block_error: None,
        }
    }

    /// The chain.
    pub(crate) fn chain(&self) -> &Arc<Blockchain> {
        &self.chain
    }

    /// Why the last refused transaction was refused.
    pub(crate) fn take_tx_error(&mut self) -> String {
        self.last_tx_error
            .take()
            .unwrap_or_else(|| "refused".to_owned())
    }

    /// Why the last refused block was refused.
    pub(crate) fn take_block_error(&mut self) -> String {
        self.last_block_error
            .take()
            .unwrap_or_else(|| "refused".to_owned())
    }
}

impl RelayHost for ChainHost {
    fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict {
        let id = tx.id();
        match self.chain.submit_transaction(tx, TimestampMs::now()) {
            Ok(_) => {
                self.tracked.insert(id);
                TxVerdict::Accepted
            }
            Err(e) => {
                let verdict = tx_verdict(&e);
                self.last_tx_error = Some(e.to_string());
                verdict
            }
        }
    }

    fn submit_transactions(&mut self, txs: Vec<Transaction>) -> Vec<TxVerdict> {
        // Signatures checked together outside the chain lock, one lock for the inserts.
        let results = self.chain.submit_transactions(txs, TimestampMs::now());
        results
            .into_iter()
            .map(|result| match result {
                Ok(id) => {
                    self.tracked.insert(id);
                    TxVerdict::Accepted
                }
                Err(e) => {
                    let verdict = tx_verdict(&e);
                    self.last_tx_error = Some(e.to_string());
                    verdict
                }
            })
            .collect()
    }

    fn transaction(&self, id: &TxId) -> Option<Transaction> {
        self.chain.mempool_get(id)
    }

    fn transactions(&self, ids: &[TxId]) -> Vec<Option<Transaction>> {
        self.chain.mempool_get_many(ids)
    }

    fn has_transaction(&self, id: &TxId) -> bool {
        self.chain.mempool_contains(id)
            || matches!(self.chain.tx_status(id), Ok(TxStatus::Included { .. }))
    }

    fn mempool_ids(&self) -> Vec<TxId> {
        // A superset: ids since included or evicted find no transaction and count as missing.
        self.tracked.ids.keys().copied().collect()
    }

    fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict {
        if self.chain.has_block(&header.hash()) {
            return HeaderVerdict::Known;
        }
        let parent = match self.chain.header(&header.parent) {
            Ok(Some(parent)) => parent,
            Ok(None) => return HeaderVerdict::UnknownParent,
            Err(e) => {
                // Our store failed: no penalty, and sync gets to try.
                tracing::warn!(error = %e, "cannot read a parent header for a relayed block");
                return HeaderVerdict::UnknownParent;
            }
        };
        match self.chain.check_header_on(header, &parent) {
            Ok(_) => HeaderVerdict::Valid,
            Err(_) => HeaderVerdict::Invalid,
        }
    }

    fn submit_block(&mut self, block: Block) -> BlockVerdict {
        let ids = block.tx_ids();
        let parent = block.header.parent;
        let chain = self.chain.clone();
        // The chain's logs stay tied to this node's relay.
        let span = tracing::Span::current();
        let imported = self.imports.run(move || {
            let _entered = span.enter();
            chain.import_block(block, TimestampMs::now())
        });
        let Some(imported) = imported else {
            self.last_block_error = Some("the import thread lost the block".to_owned());
            return BlockVerdict::Refused;
        };
        match imported {
            Ok(ImportOutcome::Imported { .. }) => {
                for id in &ids {
                    self.tracked.remove(id);
                }
                BlockVerdict::Imported
            }
            Ok(ImportOutcome::AlreadyKnown) => BlockVerdict::Known,
            Ok(ImportOutcome::Orphan { .. }) => {
                self.last_block_error = Some(format!("its parent {parent} is unknown"));
                BlockVerdict::Orphan
            }
            Ok(other) => {
                // An outcome added later: take no action on it, blame nobody.
                self.last_block_error = Some(format!("unexpected import outcome {other:?}"));
                BlockVerdict::Refused
            }
            Err(e) => {
                let verdict = block_verdict(&e);
                self.last_block_error = Some(e.to_string());
                verdict
            }
        }
    }

    fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.chain.block(hash).ok().flatten()
    }

    fn has_block(&self, hash: &BlockHash) -> bool {
        self.chain.has_block(hash)
    }
}

#[cfg(test)]
mod tests {
    use playergold_chain::{ChainConfig, ProofOfAuthority, StoreError};
    use playergold_primitives::{
        Address, Amount, Genesis, Height, Keypair, Nonce, UnsignedTransaction,
    };

    use super::*;

    const SLOT_MS: u64 = 1_000;
    const GENESIS_MS: u64 = 1_600_000_000_000;

    struct Fixture {
        keys: Vec<Keypair>,
        genesis: Genesis,
        host: ChainHost,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let keys: Vec<Keypair> = (1..=2u8).map(|i| Keypair::from_secret(&[i; 32])).collect();
        let genesis = Genesis::devnet(
            "hosttest",
            keys.iter().map(Keypair::public).collect(),
            TimestampMs(GENESIS_MS),
        )
        .expect("valid genesis");
        let dir = tempfile::tempdir().expect("temp dir");
        let chain = Blockchain::open(
            &dir.path().join("chain"),
            genesis.clone(),
            Arc::new(ProofOfAuthority::from_genesis(&genesis)),
            ChainConfig::default(),
        )
        .expect("open chain");
        Fixture {
            keys,
            genesis,
            host: ChainHost::new(Arc::new(chain)),
            _dir: dir,
        }
    }

    fn tx(nonce: u64) -> Transaction {
        let key = Keypair::from_secret(&[9; 32]);
        UnsignedTransaction {
            from: key.public(),
            to: Address([1; 20]),
            amount: Amount(1),
            fee: Amount(1),
            nonce: Nonce(nonce),
            timestamp_ms: TimestampMs(GENESIS_MS),
        }
        .sign(&key)
    }

    impl Fixture {
        /// A child of genesis in slot `slot` after it, signed by `key` (or the slot's validator).
        fn child(&self, slot: u64, key: Option<&Keypair>, txs: Vec<Transaction>) -> Block {
            let slot = GENESIS_MS / SLOT_MS + slot;
            let producer = &self.keys[(slot % self.keys.len() as u64) as usize];
            Block::build(
                key.unwrap_or(producer),
                self.genesis.hash(),
                Height(1),
                TimestampMs(slot * SLOT_MS),
                txs,
            )
        }
    }

    #[test]
    fn mempool_errors_map_to_fault_aware_verdicts() {
        let id = tx(0).id();
        assert_eq!(
            tx_verdict(&MempoolError::AlreadyKnown(id)),
            TxVerdict::Known
        );
        assert_eq!(
            tx_verdict(&MempoolError::AlreadyIncluded(id)),
            TxVerdict::Known
        );
        assert_eq!(
            tx_verdict(&MempoolError::BadSignature(id)),
            TxVerdict::Invalid
        );
        assert_eq!(
            tx_verdict(&MempoolError::TooLarge(9_999)),
            TxVerdict::Invalid
        );
        assert_eq!(
            tx_verdict(&MempoolError::FromTheFuture {
                ts: TimestampMs(2),
                now: TimestampMs(1)
            }),
            TxVerdict::Refused
        );
        assert_eq!(
            tx_verdict(&MempoolError::FeeTooLow { min_fee: Amount(5) }),
            TxVerdict::Refused
        );
    }

    #[test]
    fn import_errors_blame_the_peer_only_for_its_own_faults() {
        assert_eq!(
            block_verdict(&ImportError::BadSignature),
            BlockVerdict::Invalid
        );
        assert_eq!(
            block_verdict(&ImportError::BadTxRoot),
            BlockVerdict::Invalid
        );
        assert_eq!(
            block_verdict(&ImportError::TimestampInFuture {
                ts: TimestampMs(2),
                now: TimestampMs(1)
            }),
            BlockVerdict::Refused
        );
        assert_eq!(
            block_verdict(&ImportError::Store(StoreError::Corrupt("disk".into()))),
            BlockVerdict::Refused
        );
    }

    #[test]
    fn transactions_are_checked_and_tracked_for_compact_blocks() {
        let mut f = fixture();
        let good = tx(1);
        assert_eq!(f.host.submit_transaction(good.clone()), TxVerdict::Accepted);
        assert_eq!(f.host.submit_transaction(good.clone()), TxVerdict::Known);
        let mut forged = tx(2);
        forged.amount = Amount(1_000);
        assert_eq!(f.host.submit_transaction(forged), TxVerdict::Invalid);
        assert!(f.host.take_tx_error().contains("invalid signature"));
        assert_eq!(f.host.mempool_ids(), vec![good.id()]);
        assert!(f.host.has_transaction(&good.id()));
        // Once included, it is no longer a rebuild candidate but still "had".
        let block = f.child(1, None, vec![good.clone()]);
        assert_eq!(f.host.submit_block(block), BlockVerdict::Imported);
        assert!(f.host.mempool_ids().is_empty());
        assert!(f.host.has_transaction(&good.id()));
    }

    #[test]
    fn a_batch_is_judged_as_one_by_one_and_tracked() {
        let mut f = fixture();
        let good = tx(1);
        let mut forged = tx(2);
        forged.amount = Amount(1_000);
        let verdicts = f
            .host
            .submit_transactions(vec![good.clone(), forged, tx(3), good.clone()]);
        assert_eq!(
            verdicts,
            vec![
                TxVerdict::Accepted,
                TxVerdict::Invalid,
                TxVerdict::Accepted,
                TxVerdict::Known
            ]
        );
        let mut ids = f.host.mempool_ids();
        ids.sort();
        let mut want = vec![good.id(), tx(3).id()];
        want.sort();
        assert_eq!(ids, want);
    }

    #[test]
    fn headers_are_checked_for_linkage_producer_and_signature() {
        let mut f = fixture();
        let valid = f.child(1, None, Vec::new());
        assert_eq!(f.host.check_header(&valid.header), HeaderVerdict::Valid);
        // The other validator signing this slot: wrong producer.
        let slot = GENESIS_MS / SLOT_MS + 1;
        let other = f.keys[((slot + 1) % 2) as usize].clone();
        let wrong = f.child(1, Some(&other), Vec::new());
        assert_eq!(f.host.check_header(&wrong.header), HeaderVerdict::Invalid);
        // Tampered after signing.
        let mut forged = valid.header.clone();
        forged.timestamp_ms = TimestampMs(forged.timestamp_ms.0 + 1);
        assert_eq!(f.host.check_header(&forged), HeaderVerdict::Invalid);
        // Wrong height.
        let mut tall = valid.clone();
        tall.header.height = Height(5);
        assert_eq!(f.host.check_header(&tall.header), HeaderVerdict::Invalid);
        // Unknown parent.
        let mut orphan = valid.header.clone();
        orphan.parent = BlockHash::default();
        assert_eq!(f.host.check_header(&orphan), HeaderVerdict::UnknownParent);
        assert_eq!(f.host.submit_block(valid.clone()), BlockVerdict::Imported);
        assert_eq!(f.host.check_header(&valid.header), HeaderVerdict::Known);
        assert_eq!(f.host.submit_block(valid), BlockVerdict::Known);
    }

    #[test]
    fn tracked_ids_stay_bounded() {
        let mut t = Tracked::default();
        let id = |i: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            TxId(b)
        };
        for i in 0..(MAX_TRACKED_TXS as u64 + 10) {
            t.insert(id(i));
        }
        assert_eq!(t.ids.len(), MAX_TRACKED_TXS);
        assert!(!t.ids.contains_key(&id(0)) && t.ids.contains_key(&id(MAX_TRACKED_TXS as u64)));
        for _ in 0..3 * MAX_TRACKED_TXS {
            t.insert(id(7_000_000));
        }
        assert!(t.order.len() <= 2 * MAX_TRACKED_TXS + 1);
    }
}
