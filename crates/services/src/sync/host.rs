//! [`ChainView`]: the chain as the sync scheduler and server see it, over [`Blockchain`].
//!
//! Headers from peers pass through [`ChainView::check_header`] before any body is fetched:
//! linkage, the consensus rule (producer of the slot, slot after the parent's, work), the
//! producer's signature and a timestamp not too far ahead of our clock. What the chain checks
//! only with the ancestors at hand (median time, transactions) it checks at import.

use std::sync::Arc;

use playergold_chain::{Blockchain, ChainBackend, MAX_FUTURE_BLOCK_MS};
use playergold_primitives::{Block, BlockHash, BlockHeader, Height, TimestampMs, Work};
use playergold_protocol::Capabilities;
use playergold_protocol::sync::{Status, SyncHost, SyncScheduler, SyncServeHost};

/// The scheduler's and the server's view of the chain.
#[derive(Debug, Clone)]
pub struct ChainView {
    chain: Arc<Blockchain>,
    genesis: BlockHash,
    capabilities: Capabilities,
}

impl ChainView {
    /// A view of `chain`; `capabilities` are announced in our status.
    pub fn new(chain: Arc<Blockchain>, capabilities: Capabilities) -> ChainView {
        ChainView {
            genesis: chain.genesis_hash(),
            chain,
            capabilities,
        }
    }

    /// The chain behind the view.
    pub fn chain(&self) -> &Arc<Blockchain> {
        &self.chain
    }

    /// Whether `header` may follow `parent` now; the work it adds if so.
    fn header_work(
        &self,
        header: &BlockHeader,
        parent: &BlockHeader,
        now: TimestampMs,
    ) -> Option<Work> {
        if header.timestamp_ms.0 > now.0.saturating_add(MAX_FUTURE_BLOCK_MS) {
            return None;
        }
        self.chain.check_header_on(header, parent).ok()
    }
}

impl SyncHost for ChainView {
    fn genesis(&self) -> BlockHash {
        self.genesis
    }

    fn tip(&self) -> (BlockHash, Height, Work) {
        let tip = self.chain.tip();
        (tip.hash, tip.height, tip.cumulative_work)
    }

    fn locator(&self) -> Vec<BlockHash> {
        self.chain.block_locator()
    }

    fn header(&self, hash: &BlockHash) -> Option<BlockHeader> {
        match self.chain.header(hash) {
            Ok(header) => header,
            Err(e) => {
                // Our store failed: sync treats it as unknown and tries again later.
                tracing::warn!(error = %e, block = %hash, "cannot read a stored header for sync");
                None
            }
        }
    }

    fn work_of(&self, hash: &BlockHash) -> Option<Work> {
        self.chain.fork_key(hash).map(|key| key.work)
    }

    fn check_header(&self, header: &BlockHeader, parent: &BlockHeader) -> Option<Work> {
        self.header_work(header, parent, TimestampMs::now())
    }

    /// Stored blocks only: a block waiting in the orphan pool is exactly what sync must fetch
    /// the ancestors of (`ChainBackend::has_block` counts orphans too).
    fn has_block(&self, hash: &BlockHash) -> bool {
        SyncHost::header(self, hash).is_some()
    }
}

impl SyncServeHost for ChainView {
    fn status(&self) -> Status {
        SyncScheduler::<()>::status_request(self, self.capabilities)
    }

    fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<BlockHeader> {
        match self.chain.headers_after(locator, max) {
            Ok(headers) => headers,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read headers to serve a sync request");
                Vec::new()
            }
        }
    }

    fn block(&self, hash: &BlockHash) -> Option<Block> {
        match self.chain.block(hash) {
            Ok(block) => block,
            Err(e) => {
                tracing::warn!(error = %e, block = %hash, "cannot read a block to serve");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use playergold_chain::{ChainConfig, ImportOutcome, ProofOfAuthority};
    use playergold_primitives::{Genesis, Keypair};

    use super::*;

    const SLOT_MS: u64 = 1_000;
    const GENESIS_MS: u64 = 1_600_000_000_000;

    struct Fixture {
        keys: Vec<Keypair>,
        genesis: Genesis,
        view: ChainView,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let keys: Vec<Keypair> = (1..=2u8).map(|i| Keypair::from_secret(&[i; 32])).collect();
        let genesis = Genesis::devnet(
            "viewtest",
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
            view: ChainView::new(Arc::new(chain), Capabilities::NONE),
            _dir: dir,
        }
    }

    impl Fixture {
        /// A block on `parent` in slot `slot` after genesis, by that slot's validator unless
        /// `key` is given.
        fn block(&self, parent: &BlockHeader, slot: u64, key: Option<&Keypair>) -> Block {
            let slot = GENESIS_MS / SLOT_MS + slot;
            let producer = &self.keys[(slot % self.keys.len() as u64) as usize];
            Block::build(
                key.unwrap_or(producer),
                parent.hash(),
                Height(parent.height.0 + 1),
                TimestampMs(slot * SLOT_MS),
                vec![],
            )
        }
    }

    #[test]
    fn headers_are_checked_for_linkage_producer_signature_and_time() {
        let f = fixture();
        let genesis = f.genesis.block().header;
        let good = f.block(&genesis, 1, None);
        assert_eq!(f.view.check_header(&good.header, &genesis), Some(Work(1)));
        // The other validator signing this slot.
        let slot = GENESIS_MS / SLOT_MS + 1;
        let other = f.keys[((slot + 1) % 2) as usize].clone();
        let wrong = f.block(&genesis, 1, Some(&other));
        assert_eq!(f.view.check_header(&wrong.header, &genesis), None);
        // Tampered after signing.
        let mut forged = good.header.clone();
        forged.tx_root = playergold_primitives::Hash32([7; 32]);
        assert_eq!(f.view.check_header(&forged, &genesis), None);
        // Not a child of this parent.
        let grandchild = f.block(&good.header, 2, None);
        assert_eq!(f.view.check_header(&grandchild.header, &genesis), None);
        // Too far ahead of our clock.
        let now = TimestampMs(good.header.timestamp_ms.0 - MAX_FUTURE_BLOCK_MS - 1);
        assert_eq!(f.view.header_work(&good.header, &genesis, now), None);
    }

    #[test]
    fn orphans_do_not_count_as_stored_and_status_reports_the_tip() {
        let f = fixture();
        let genesis = f.genesis.block().header;
        let first = f.block(&genesis, 1, None);
        let second = f.block(&first.header, 2, None);
        let chain = f.view.chain().clone();
        assert!(matches!(
            chain.import_block(second.clone(), TimestampMs::now()),
            Ok(ImportOutcome::Orphan { .. })
        ));
        assert!(
            chain.has_block(&second.hash()),
            "the chain counts its orphans"
        );
        assert!(
            !SyncHost::has_block(&f.view, &second.hash()),
            "sync does not"
        );
        chain
            .import_block(first.clone(), TimestampMs::now())
            .expect("imports");
        assert!(SyncHost::has_block(&f.view, &second.hash()));
        assert_eq!(f.view.work_of(&second.hash()), Some(Work(2)));
        let status = f.view.status();
        assert_eq!(status.genesis, f.genesis.hash());
        assert_eq!(status.best_hash, second.hash());
        assert_eq!(status.best_height, Height(2));
        let served = f.view.headers_after(&[genesis.hash()], 10);
        assert_eq!(served, vec![first.header, second.header]);
    }
}
