//! A deterministic network simulator: N relay engines with fake chain hosts, links with fixed
//! one-way delays, a virtual clock. Messages go through the real codec on every hop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use playergold_primitives::codec;
use playergold_primitives::{
    Address, Amount, Block, BlockHash, BlockHeader, Genesis, Height, Keypair, Nonce, PublicKey,
    TimestampMs, Transaction, TxId, UnsignedTransaction, merkle_root,
};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    BlockImport, BlockVerdict, HeaderVerdict, PropagationConfig, RelayEngine, RelayEvent,
    RelayHost, RelayMessage, TxVerdict,
};

/// The chain and mempool of one simulated node: just enough validation to tell good from bad.
pub(crate) struct FakeHost {
    pub(crate) mempool: HashMap<TxId, Transaction>,
    pub(crate) blocks: HashMap<BlockHash, Block>,
    validators: HashSet<PublicKey>,
}

impl FakeHost {
    fn new(genesis: &Block, validators: HashSet<PublicKey>) -> FakeHost {
        FakeHost {
            mempool: HashMap::new(),
            blocks: HashMap::from([(genesis.hash(), genesis.clone())]),
            validators,
        }
    }

    /// A host on `sim`'s genesis, for engines driven by hand.
    pub(crate) fn for_tests(sim: &Sim) -> FakeHost {
        FakeHost::new(&sim.genesis, HashSet::from([sim.producer.public()]))
    }

    fn in_chain(&self, id: &TxId) -> bool {
        self.blocks
            .values()
            .any(|b| b.txs.iter().any(|t| t.id() == *id))
    }
}

impl RelayHost for FakeHost {
    fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict {
        let id = tx.id();
        if tx.verify().is_err() {
            return TxVerdict::Invalid;
        }
        if self.mempool.contains_key(&id) || self.in_chain(&id) {
            return TxVerdict::Known;
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
        self.mempool.keys().copied().collect()
    }
    fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict {
        if self.blocks.contains_key(&header.hash()) {
            return HeaderVerdict::Known;
        }
        if header.verify_signature().is_err() || !self.validators.contains(&header.producer) {
            return HeaderVerdict::Invalid;
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
        let ids = block.tx_ids();
        if merkle_root(&ids) != block.header.tx_root || block.verify_signatures(&ids).is_err() {
            return BlockVerdict::Invalid;
        }
        for id in &ids {
            self.mempool.remove(id);
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

pub(crate) struct Node {
    pub(crate) engine: RelayEngine<usize>,
    pub(crate) host: FakeHost,
    pub(crate) events: Vec<RelayEvent<usize>>,
}

type Filter = Box<dyn FnMut(usize, usize, &RelayMessage) -> bool>;

/// The simulated network.
pub(crate) struct Sim {
    pub(crate) now: Instant,
    pub(crate) nodes: Vec<Node>,
    links: HashMap<(usize, usize), Duration>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize, usize)>>,
    in_flight: HashMap<u64, Vec<u8>>,
    seq: u64,
    /// Returns false to drop a message (from, to, message).
    pub(crate) filter: Option<Filter>,
    /// Bytes delivered, by message kind name.
    pub(crate) bytes: HashMap<&'static str, usize>,
    pub(crate) producer: Keypair,
    pub(crate) genesis: Block,
}

pub(crate) fn kind(msg: &RelayMessage) -> &'static str {
    match msg {
        RelayMessage::Announce(_) => "announce",
        RelayMessage::Request(_) => "request",
        RelayMessage::NotFound(_) => "notfound",
        RelayMessage::Transactions(_) => "transactions",
        RelayMessage::CompactBlock(_) => "compact",
        RelayMessage::BlockTxnsRequest { .. } => "blocktxnsrequest",
        RelayMessage::BlockTxns { .. } => "blocktxns",
        RelayMessage::Block(_) => "block",
        RelayMessage::Challenge(_) => "challenge",
        RelayMessage::Solution { .. } => "solution",
        RelayMessage::Verdict(_) => "verdict",
        RelayMessage::AnnounceTxs(_) | RelayMessage::AnnounceTx(_) => "announce_txs",
        RelayMessage::RequestTxs(_) | RelayMessage::RequestTx(_) => "request_txs",
        RelayMessage::TxsNotFound(_) => "txs_not_found",
    }
}

impl Sim {
    pub(crate) fn new(n: usize, config: PropagationConfig) -> Sim {
        let producer = Keypair::from_secret(&[200; 32]);
        let genesis = Genesis::devnet("simnet", vec![producer.public()], TimestampMs(0))
            .expect("valid genesis")
            .block();
        let validators = HashSet::from([producer.public()]);
        let nodes = (0..n)
            .map(|i| Node {
                engine: RelayEngine::new(config.clone(), i as u64),
                host: FakeHost::new(&genesis, validators.clone()),
                events: Vec::new(),
            })
            .collect();
        let start = Instant::now();
        Sim {
            now: start,
            nodes,
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            filter: None,
            bytes: HashMap::new(),
            producer,
            genesis,
        }
    }

    /// Connects `a` and `b` both ways with a one-way `delay`.
    pub(crate) fn connect(&mut self, a: usize, b: usize, delay: Duration) {
        self.links.insert((a, b), delay);
        self.links.insert((b, a), delay);
    }

    /// Registers every link with the engines (after all `connect` calls).
    pub(crate) fn start_engines(&mut self, caps: impl Fn(usize) -> Capabilities) {
        for &(a, b) in self.links.keys() {
            self.nodes[a].engine.add_peer(b, caps(b));
        }
    }

    /// Each node linked to `degree` random others (a connected ring plus random chords).
    pub(crate) fn random_overlay(&mut self, degree: usize, delay: Duration, seed: u64) {
        let n = self.nodes.len();
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as usize
        };
        for i in 0..n {
            self.connect(i, (i + 1) % n, delay);
        }
        for i in 0..n {
            while self.links.keys().filter(|(a, _)| *a == i).count() < degree.min(n - 1) {
                let j = next() % n;
                if j != i {
                    self.connect(i, j, delay);
                }
            }
        }
    }

    /// Moves every queued outbound message of `from` onto the wire.
    fn drain(&mut self, from: usize) {
        for to in self.nodes[from].engine.peers_with_pending() {
            while let Some(msg) = self.nodes[from].engine.poll_transmit(&to) {
                if let Some(f) = self.filter.as_mut()
                    && !f(from, to, &msg)
                {
                    continue;
                }
                let Some(delay) = self.links.get(&(from, to)).copied() else {
                    continue;
                };
                let bytes = codec::encode(&msg);
                *self.bytes.entry(kind(&msg)).or_default() += bytes.len();
                self.seq += 1;
                self.in_flight.insert(self.seq, bytes);
                self.queue
                    .push(Reverse((self.now + delay, self.seq, from, to)));
            }
        }
        while let Some(e) = self.nodes[from].engine.poll_event() {
            self.nodes[from].events.push(e);
        }
    }

    /// Runs until nothing is left to do or `limit` of simulated time passes.
    pub(crate) fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
        loop {
            let next_msg = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.poll_timeout())
                .min();
            let next = match (next_msg, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return,
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let Some(Reverse((_, seq, from, to))) = self.queue.pop() else {
                    return;
                };
                let bytes = self.in_flight.remove(&seq).expect("in flight");
                let msg: RelayMessage = codec::decode(&bytes).expect("decodes");
                self.deliver(from, to, msg);
            } else {
                for i in 0..self.nodes.len() {
                    if self.nodes[i]
                        .engine
                        .poll_timeout()
                        .is_some_and(|t| t <= self.now)
                    {
                        self.nodes[i].engine.handle_timeout(self.now);
                        self.drain(i);
                    }
                }
            }
        }
    }

    /// A valid signed transaction from a throw-away sender.
    pub(crate) fn tx(&self, n: u64) -> Transaction {
        let key = Keypair::from_secret(&[(n % 250) as u8 + 1; 32]);
        UnsignedTransaction {
            from: key.public(),
            to: Address([9; 20]),
            amount: Amount(1),
            fee: Amount(1),
            nonce: Nonce(n),
            timestamp_ms: TimestampMs(0),
        }
        .sign(&key)
    }

    /// Submits a transaction at `node` as a local user would.
    pub(crate) fn submit_tx(&mut self, node: usize, tx: Transaction) {
        let now = self.now;
        let n = &mut self.nodes[node];
        n.engine
            .submit_transaction(now, tx, &mut n.host)
            .expect("valid tx accepted");
        self.drain(node);
    }

    /// `node` produces a block on genesis with `txs` and propagates it as the node does: pushed
    /// first, imported right after.
    pub(crate) fn produce(&mut self, node: usize, txs: Vec<Transaction>) -> Block {
        let block = Block::build(
            &self.producer,
            self.genesis.hash(),
            Height(1),
            TimestampMs(1_000),
            txs,
        );
        let now = self.now;
        let n = &mut self.nodes[node];
        n.engine
            .propagate_new_block(now, block.clone(), &mut n.host);
        self.drain(node);
        let n = &mut self.nodes[node];
        let imports = n.engine.run_pending_imports(now, &mut n.host);
        assert_eq!(
            imports,
            vec![BlockImport {
                hash: block.hash(),
                from: None,
                verdict: BlockVerdict::Imported
            }]
        );
        self.drain(node);
        block
    }

    /// Injects a raw message from `from` to `to` (a misbehaving peer).
    pub(crate) fn inject(&mut self, from: usize, to: usize, msg: RelayMessage) {
        self.deliver(from, to, msg);
    }

    /// Hands `msg` to `to` as the relay service does: what it queues goes on the wire before
    /// any block import it leads to runs.
    fn deliver(&mut self, from: usize, to: usize, msg: RelayMessage) {
        let now = self.now;
        let node = &mut self.nodes[to];
        node.engine
            .handle_message_deferred(now, from, msg, &mut node.host);
        self.drain(to);
        let node = &mut self.nodes[to];
        if node.engine.has_pending_imports() {
            node.engine.run_pending_imports(now, &mut node.host);
            self.drain(to);
        }
    }
}
