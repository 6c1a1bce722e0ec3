//! What the fuzz targets share: the decode invariant, fixtures signed once per process, fake
//! chain hosts whose validation is a table lookup (so the fuzzer spends its time in the state
//! machines, not in ed25519), and a reader for structured input.
//!
//! Validity in the fake hosts is exact: a transaction or header is valid only if it equals, field
//! for field and signature included, one signed here. Ids do not cover signatures, so a copy of
//! a valid item with a bad signature has the valid item's id and must still be refused.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::Unstructured;
use playergold_primitives::codec::{self, WireDecode};
use playergold_primitives::{
    Address, Amount, Block, BlockHash, BlockHeader, Genesis, Height, Keypair, Nonce, Signature,
    TimestampMs, Transaction, TxId, UnsignedTransaction, Work, merkle_root,
};
use playergold_protocol::Capabilities;
use playergold_protocol::ai::{Challenge, HashPuzzle, Solution, Verdict};
use playergold_protocol::relay::{BlockVerdict, HeaderVerdict, RelayHost, TxVerdict};
use playergold_protocol::sync::{Status, SyncHost, SyncServeHost};

/// Decodes `data` as `T`. For a value that decodes, checks that `data` is exactly its canonical
/// encoding (one encoding per value) and that the encoding decodes back to an equal value.
pub fn round_trip<T: WireDecode + PartialEq + Debug>(data: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(data).ok()?;
    let bytes = codec::encode(&value);
    assert_eq!(
        bytes, data,
        "accepted bytes are the value's one canonical encoding"
    );
    assert_eq!(codec::encoded_len(&value), bytes.len());
    let again = codec::decode::<T>(&bytes).expect("an encoded value decodes");
    assert_eq!(again, value);
    Some(value)
}

/// Blocks in the fixture chain that sync targets download.
pub const CHAIN_LEN: usize = 24;
/// Height (in the fixture chain) the fork branches off at.
pub const FORK_AT: usize = 8;
/// Blocks on the fork.
pub const FORK_LEN: usize = 20;

/// Items signed once per process.
pub struct Fixtures {
    /// The genesis block (validator: `producer`).
    pub genesis: Block,
    /// Valid transactions.
    pub txs: Vec<Transaction>,
    /// Copies of `txs` with a broken signature: same id, invalid.
    pub forged_txs: Vec<Transaction>,
    /// Valid relay blocks: `[b1 on genesis, b1' on genesis, b2 on b1, b3 on b2]`.
    pub blocks: Vec<Block>,
    /// Invalid blocks: a stranger's, b1 with a forged signature (b1's hash), b1 with a body that
    /// does not match its root (b1's hash too).
    pub bad_blocks: Vec<Block>,
    /// The sync chain: `CHAIN_LEN` blocks above genesis, two txs each.
    pub chain: Vec<Block>,
    /// A heavier fork of `chain` above `chain[FORK_AT - 1]`.
    pub fork: Vec<Block>,
    /// AI: challenges (the last one with a forged signature).
    pub challenges: Vec<Challenge>,
    /// AI: solutions of `challenges[0]`.
    pub solutions: Vec<Solution>,
    /// AI: verdicts on `solutions[0]`.
    pub verdicts: Vec<Verdict>,
    valid_txs: HashMap<TxId, Transaction>,
    valid_headers: HashMap<BlockHash, BlockHeader>,
}

impl Fixtures {
    /// Whether `tx` is exactly one of the valid transactions.
    pub fn tx_is_valid(&self, tx: &Transaction) -> bool {
        self.valid_txs.get(&tx.id()) == Some(tx)
    }

    /// Whether `header` is exactly one of the valid headers.
    pub fn header_is_valid(&self, header: &BlockHeader) -> bool {
        self.valid_headers.get(&header.hash()) == Some(header)
    }

    /// Whether `block` is valid: valid header, body matching its root, valid transactions.
    pub fn block_is_valid(&self, block: &Block) -> bool {
        self.header_is_valid(&block.header)
            && merkle_root(&block.tx_ids()) == block.header.tx_root
            && block.txs.iter().all(|t| self.tx_is_valid(t))
    }

    /// Every valid block, relay and sync.
    pub fn all_blocks(&self) -> impl Iterator<Item = &Block> {
        self.blocks.iter().chain(&self.chain).chain(&self.fork)
    }
}

fn tx(n: u64) -> Transaction {
    let key = Keypair::from_secret(&[(n % 200) as u8 + 1; 32]);
    UnsignedTransaction {
        from: key.public(),
        to: Address([7; 20]),
        amount: Amount(n + 1),
        fee: Amount(1),
        nonce: Nonce(n),
        timestamp_ms: TimestampMs(0),
    }
    .sign(&key)
}

fn forge(signature: &Signature) -> Signature {
    let mut s = *signature;
    s.0[0] ^= 1;
    s
}

fn build_chain(
    producer: &Keypair,
    from: &Block,
    len: usize,
    first_tx: u64,
    ts_step: u64,
) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::with_capacity(len);
    for i in 0..len {
        let parent = out.last().unwrap_or(from);
        let n = first_tx + 2 * i as u64;
        out.push(Block::build(
            producer,
            parent.hash(),
            Height(parent.header.height.0 + 1),
            TimestampMs(parent.header.timestamp_ms.0 + ts_step),
            vec![tx(n), tx(n + 1)],
        ));
    }
    out
}

/// The fixtures, built on first use.
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let producer = Keypair::from_secret(&[200; 32]);
        let stranger = Keypair::from_secret(&[201; 32]);
        let genesis = Genesis::devnet("fuzznet", vec![producer.public()], TimestampMs(0))
            .expect("valid genesis")
            .block();
        let txs: Vec<Transaction> = (0..12).map(tx).collect();
        let forged_txs = txs
            .iter()
            .map(|t| Transaction {
                signature: forge(&t.signature),
                ..t.clone()
            })
            .collect();
        let at = |parent: &Block, ts: u64, txs: &[Transaction]| {
            Block::build(
                &producer,
                parent.hash(),
                Height(parent.header.height.0 + 1),
                TimestampMs(ts),
                txs.to_vec(),
            )
        };
        let b1 = at(&genesis, 1_000, &txs[0..4]);
        let b1_fork = at(&genesis, 2_000, &txs[4..6]);
        let b2 = at(&b1, 3_000, &txs[6..9]);
        let b3 = at(&b2, 4_000, &[]);
        let blocks = vec![b1.clone(), b1_fork, b2, b3];
        let strangers = Block::build(
            &stranger,
            genesis.hash(),
            Height(1),
            TimestampMs(1_000),
            vec![],
        );
        let mut forged = b1.clone();
        forged.header.signature = forge(&forged.header.signature);
        let mut wrong_body = b1.clone();
        wrong_body.txs.swap(0, 1);
        let bad_blocks = vec![strangers, forged, wrong_body];
        let chain = build_chain(&producer, &genesis, CHAIN_LEN, 1_000, 1_000);
        let fork = build_chain(&producer, &chain[FORK_AT - 1], FORK_LEN, 5_000, 999);

        let keys: Vec<Keypair> = (0..5u8)
            .map(|i| Keypair::from_secret(&[i + 100; 32]))
            .collect();
        let challenge = Challenge::new(
            &keys[0],
            1,
            HashPuzzle::KIND,
            vec![0],
            TimestampMs(u64::MAX),
            3,
        );
        let other = Challenge::new(
            &keys[1],
            2,
            HashPuzzle::KIND,
            vec![1],
            TimestampMs(u64::MAX),
            1,
        );
        let mut forged_challenge = challenge.clone();
        forged_challenge.body.nonce = 9;
        let solutions = vec![
            Solution::new(&keys[1], challenge.id(), 0u64.to_le_bytes().to_vec()),
            Solution::new(&keys[2], challenge.id(), 1u64.to_le_bytes().to_vec()),
            Solution::new(&keys[1], other.id(), vec![]),
        ];
        let verdicts = vec![
            Verdict::new(&keys[2], &solutions[0], true),
            Verdict::new(&keys[3], &solutions[0], true),
            Verdict::new(&keys[4], &solutions[0], false),
            Verdict::new(&keys[1], &solutions[0], true),
        ];
        let challenges = vec![challenge, other, forged_challenge];

        let mut valid_txs: HashMap<TxId, Transaction> =
            txs.iter().map(|t| (t.id(), t.clone())).collect();
        let mut valid_headers = HashMap::new();
        for b in blocks.iter().chain(&chain).chain(&fork) {
            valid_headers.insert(b.hash(), b.header.clone());
            for t in &b.txs {
                valid_txs.insert(t.id(), t.clone());
            }
        }
        Fixtures {
            genesis,
            txs,
            forged_txs,
            blocks,
            bad_blocks,
            chain,
            fork,
            challenges,
            solutions,
            verdicts,
            valid_txs,
            valid_headers,
        }
    })
}

/// A relay host: a mempool and a block store, validation by fixture lookup.
#[derive(Debug, Default)]
pub struct RelayChain {
    /// The mempool.
    pub mempool: HashMap<TxId, Transaction>,
    /// Stored blocks, genesis included.
    pub blocks: HashMap<BlockHash, Block>,
    /// Refuse valid transactions (mempool full).
    pub refuse_txs: bool,
    /// Refuse blocks with a valid header (a store error, a timestamp slightly ahead).
    pub refuse_blocks: bool,
}

impl RelayChain {
    /// A host holding genesis.
    pub fn new() -> RelayChain {
        let g = &fixtures().genesis;
        RelayChain {
            blocks: HashMap::from([(g.hash(), g.clone())]),
            ..RelayChain::default()
        }
    }

    /// Whether a stored block holds the transaction.
    pub fn in_chain(&self, id: &TxId) -> bool {
        self.blocks
            .values()
            .any(|b| b.txs.iter().any(|t| t.id() == *id))
    }
}

impl RelayHost for RelayChain {
    fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict {
        let id = tx.id();
        if !fixtures().tx_is_valid(&tx) {
            return TxVerdict::Invalid;
        }
        if self.mempool.contains_key(&id) || self.in_chain(&id) {
            return TxVerdict::Known;
        }
        if self.refuse_txs {
            return TxVerdict::Refused;
        }
        self.mempool.insert(id, tx);
        TxVerdict::Accepted
    }
    fn transaction(&self, id: &TxId) -> Option<Transaction> {
        self.mempool.get(id).cloned()
    }
    fn has_transaction(&self, id: &TxId) -> bool {
        self.mempool.contains_key(id)
    }
    fn mempool_ids(&self) -> Vec<TxId> {
        let mut ids: Vec<TxId> = self.mempool.keys().copied().collect();
        ids.sort();
        ids
    }
    fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict {
        if !fixtures().header_is_valid(header) {
            return HeaderVerdict::Invalid;
        }
        if self.blocks.contains_key(&header.hash()) {
            return HeaderVerdict::Known;
        }
        if !self.blocks.contains_key(&header.parent) {
            return HeaderVerdict::UnknownParent;
        }
        HeaderVerdict::Valid
    }
    fn submit_block(&mut self, block: Block) -> BlockVerdict {
        match self.check_header(&block.header) {
            HeaderVerdict::Known => return BlockVerdict::Known,
            HeaderVerdict::Invalid => return BlockVerdict::Invalid,
            HeaderVerdict::UnknownParent => return BlockVerdict::Orphan,
            HeaderVerdict::Valid => {}
        }
        // Refused for a local reason found before the body is checked (a timestamp slightly
        // ahead, a store error): the body may be anything.
        if self.refuse_blocks {
            return BlockVerdict::Refused;
        }
        if !fixtures().block_is_valid(&block) {
            return BlockVerdict::Invalid;
        }
        for t in &block.txs {
            self.mempool.remove(&t.id());
        }
        self.blocks.insert(block.hash(), block);
        BlockVerdict::Imported
    }
    fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.blocks.get(hash).cloned()
    }
    fn has_block(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }
}

/// A sync host: stored blocks with their cumulative work (one per block), best chain by work.
#[derive(Debug, Clone)]
pub struct SyncChain {
    blocks: HashMap<BlockHash, (Block, Work)>,
    best: Vec<BlockHash>,
}

impl Default for SyncChain {
    fn default() -> Self {
        let g = &fixtures().genesis;
        SyncChain {
            blocks: HashMap::from([(g.hash(), (g.clone(), Work(0)))]),
            best: vec![g.hash()],
        }
    }
}

impl SyncChain {
    /// A chain holding `blocks` (each imported in turn).
    pub fn holding<'a>(blocks: impl IntoIterator<Item = &'a Block>) -> SyncChain {
        let mut chain = SyncChain::default();
        for b in blocks {
            chain.import(b);
        }
        chain
    }

    /// Imports a valid block whose parent is stored; false if refused.
    pub fn import(&mut self, block: &Block) -> bool {
        let Some((parent, work)) = self.blocks.get(&block.header.parent).cloned() else {
            return false;
        };
        if !fixtures().block_is_valid(block) || block.header.height.0 != parent.header.height.0 + 1
        {
            return false;
        }
        let hash = block.hash();
        let work = Work(work.0 + 1);
        let best_work = self.blocks[self.tip_hash()].1;
        self.blocks.insert(hash, (block.clone(), work));
        if work > best_work {
            let mut chain = vec![hash];
            let mut h = block.header.parent;
            while let Some((b, _)) = self.blocks.get(&h) {
                chain.push(h);
                if b.header.height.0 == 0 {
                    break;
                }
                h = b.header.parent;
            }
            chain.reverse();
            self.best = chain;
        }
        true
    }

    fn tip_hash(&self) -> &BlockHash {
        self.best.last().unwrap_or(&self.best[0])
    }

    /// Whether the block is stored.
    pub fn has(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }
}

impl SyncHost for SyncChain {
    fn genesis(&self) -> BlockHash {
        fixtures().genesis.hash()
    }
    fn tip(&self) -> (BlockHash, Height, Work) {
        let hash = *self.tip_hash();
        let (b, w) = &self.blocks[&hash];
        (hash, b.header.height, *w)
    }
    fn locator(&self) -> Vec<BlockHash> {
        // Every block, newest first: the fixture chains are short.
        self.best.iter().rev().copied().take(64).collect()
    }
    fn header(&self, hash: &BlockHash) -> Option<BlockHeader> {
        self.blocks.get(hash).map(|(b, _)| b.header.clone())
    }
    fn work_of(&self, hash: &BlockHash) -> Option<Work> {
        self.blocks.get(hash).map(|(_, w)| *w)
    }
    fn check_header(&self, header: &BlockHeader, parent: &BlockHeader) -> Option<Work> {
        let ok = fixtures().header_is_valid(header)
            && header.parent == parent.hash()
            && header.height.0 == parent.height.0 + 1;
        ok.then_some(Work(1))
    }
}

impl SyncServeHost for SyncChain {
    fn status(&self) -> Status {
        let (best_hash, best_height, cumulative_work) = self.tip();
        Status {
            genesis: self.genesis(),
            best_hash,
            best_height,
            cumulative_work,
            capabilities: Capabilities::NONE,
        }
    }
    fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<BlockHeader> {
        let start = locator
            .iter()
            .find_map(|h| self.best.iter().position(|b| b == h))
            .map_or(0, |i| i + 1);
        self.best[start.min(self.best.len())..]
            .iter()
            .take(max)
            .map(|h| self.blocks[h].0.header.clone())
            .collect()
    }
    fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.blocks.get(hash).map(|(b, _)| b.clone())
    }
}

/// Picks one of `items` (the first when the input has run out).
pub fn pick<'a, T>(u: &mut Unstructured<'_>, items: &'a [T]) -> &'a T {
    let i = u.choose_index(items.len()).unwrap_or(0);
    &items[i]
}

/// A small number in `0..=max`.
pub fn small(u: &mut Unstructured<'_>, max: usize) -> usize {
    u.int_in_range(0..=max).unwrap_or(0)
}

/// Up to `max` bytes for a raw frame.
pub fn frame<'a>(u: &mut Unstructured<'a>, max: usize) -> &'a [u8] {
    let len = small(u, max);
    u.bytes(len.min(u.len())).unwrap_or(&[])
}

/// 32 hash bytes: mostly one of the fixtures' (so lookups hit), sometimes arbitrary.
pub fn hash(u: &mut Unstructured<'_>) -> [u8; 32] {
    let f = fixtures();
    match small(u, 3) {
        0 => u.arbitrary::<[u8; 32]>().unwrap_or_default(),
        1 => pick(u, &f.txs).id().0,
        2 => pick(u, &f.blocks).hash().0,
        _ => pick(u, &f.chain).hash().0,
    }
}
