//! A devnet chain on a temporary directory and helpers to build valid blocks.

use std::sync::Arc;

use playergold_chain::{Blockchain, ChainConfig, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, Block, BlockHeader, Genesis, Height, Keypair, Nonce, TimestampMs, Transaction,
    UnsignedTransaction,
};

pub(crate) const SLOT_MS: u64 = 1_000;
/// Far enough in the past that thousands of slots fit before "now".
pub(crate) const GENESIS_MS: u64 = 1_600_000_000_000;

pub(crate) struct Devnet {
    pub(crate) keys: Vec<Keypair>,
    pub(crate) genesis: Genesis,
    pub(crate) dir: tempfile::TempDir,
}

impl Devnet {
    pub(crate) fn new(validators: u8) -> Devnet {
        let keys: Vec<Keypair> = (1..=validators)
            .map(|i| Keypair::from_secret(&[i; 32]))
            .collect();
        let genesis = Genesis::devnet(
            "testnet",
            keys.iter().map(Keypair::public).collect(),
            TimestampMs(GENESIS_MS),
        )
        .expect("valid genesis");
        Devnet {
            keys,
            genesis,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn open(&self, name: &str) -> Blockchain {
        Blockchain::open(
            &self.dir.path().join(name),
            self.genesis.clone(),
            Arc::new(ProofOfAuthority::from_genesis(&self.genesis)),
            ChainConfig::default(),
        )
        .expect("open chain")
    }

    /// The validator of the slot `slots` after `parent`'s, and that slot's start time.
    pub(crate) fn slot_after(&self, parent: &BlockHeader, slots: u64) -> (&Keypair, TimestampMs) {
        let slot = parent.timestamp_ms.0 / SLOT_MS + slots;
        let key = &self.keys[(slot % self.keys.len() as u64) as usize];
        (key, TimestampMs(slot * SLOT_MS))
    }

    /// A valid child of `parent`, `slots` slots later, carrying `txs`.
    pub(crate) fn child(&self, parent: &BlockHeader, slots: u64, txs: Vec<Transaction>) -> Block {
        let (key, ts) = self.slot_after(parent, slots);
        Block::build(key, parent.hash(), Height(parent.height.0 + 1), ts, txs)
    }
}

pub(crate) fn now() -> TimestampMs {
    TimestampMs::now()
}

pub(crate) fn tx(sender: u8, nonce: u64, fee: u64) -> Transaction {
    let key = Keypair::from_secret(&[sender.wrapping_add(100); 32]);
    UnsignedTransaction {
        from: key.public(),
        to: Address([sender; 20]),
        amount: Amount(1),
        fee: Amount(fee),
        nonce: Nonce(nonce),
        timestamp_ms: TimestampMs(GENESIS_MS),
    }
    .sign(&key)
}
