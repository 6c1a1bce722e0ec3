//! Propagation settings: which strategy each kind of item uses, and the engine's bounds.

use std::time::Duration;

/// What a request for one full block counts against [`PropagationConfig::request_rate`]: about
/// the transactions it carries.
pub const BLOCK_REQUEST_COST: f64 = 100.0;

/// How an item kind spreads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Strategy {
    /// Push the full item to every peer not known to have it (for transactions: every peer of
    /// the relay set, see [`PropagationConfig::max_relay_peers`]).
    Flood,
    /// Push the full item to `fanout` peers and announce its id to the rest, who request it
    /// (for transactions, of the relay set).
    Gossip,
    /// Send only to peers with the item's capability, within a hop budget.
    Directed,
}

/// How many peers get a gossiped item pushed in full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fanout {
    /// ⌈√peers⌉ (of the relay set, for transactions), as geth does for transactions.
    Sqrt,
    /// This fraction of the peers (rounded up).
    Fraction(f64),
    /// A fixed number of peers.
    Fixed(usize),
}

impl Fanout {
    /// Peers to push to out of `n`.
    pub fn of(self, n: usize) -> usize {
        let k = match self {
            Fanout::Sqrt => (n as f64).sqrt().ceil() as usize,
            Fanout::Fraction(f) => (n as f64 * f.clamp(0.0, 1.0)).ceil() as usize,
            Fanout::Fixed(k) => k,
        };
        k.min(n)
    }
}

/// Settings of the propagation engine.
#[derive(Debug, Clone, PartialEq)]
pub struct PropagationConfig {
    /// Strategy for transactions (default gossip).
    pub tx_strategy: Strategy,
    /// Strategy for AI challenges (default directed to `ai-compute` peers).
    pub challenge_strategy: Strategy,
    /// Hop budget a challenge starts with.
    pub max_hops: u8,
    /// Push fanout for gossip (default √peers).
    pub gossip_factor: Fanout,
    /// Whether a gossiped transaction relayed from a peer is pushed in full to `gossip_factor`
    /// peers again at every hop (geth's way), or only announced (default). Each push at every
    /// hop costs about one extra copy of the transaction per node and push (a node receives
    /// each transaction from ~`gossip_factor` peers), which is most of geth's bandwidth; pushing
    /// only at the origin keeps the first hop fast and has every other node pull its one copy.
    pub push_relayed_txs: bool,
    /// Most peers in the relay set: the peers we push transactions (pushes and announcements)
    /// and blocks relayed from others to, however many we are connected to. Our own blocks,
    /// AI messages and answers to requests still go to every peer. A node's cost per item is
    /// then bounded by this, not by its connection count (Bitcoin Core pushes compact blocks to
    /// a few peers and keeps some connections block-relay-only; it still announces
    /// transactions to every full-relay peer, with a trickle). Every node picks its own set, a
    /// uniform sample of its peers, so a node hears of items from this many peers on average,
    /// but from none if no peer picked it: a node with few links to well-connected peers (8
    /// links to peers with 50 each: (42/50)^8, about a quarter of such nodes) then gets
    /// transactions only in blocks, and blocks from their producers or from sync. Letting the
    /// receiver ask its peers to relay to it (BIP152's high-bandwidth mode) closes that gap.
    pub max_relay_peers: usize,
    /// Ids remembered to drop duplicates.
    pub duplicate_cache_size: usize,
    /// Most items per announcement or tx push batch.
    pub batch_size: usize,
    /// How long an item may wait for its batch to fill.
    pub batch_delay: Duration,
    /// How long a relayed transaction's announcement may wait for others to the same peer (a
    /// trickle, as Bitcoin Core's, though far shorter): each frame costs both ends wake-ups
    /// and a write whatever it carries, so at 100 tx/s a 100 ms interval sends about ten ids
    /// per frame instead of one. Pushes and the origin's announcements wait only
    /// `batch_delay`.
    pub announce_interval: Duration,
    /// How long one side of each link holds back its announcement of a relayed transaction.
    /// Which side yields is decided per transaction and link ([`AnnounceOrder`]): the other side
    /// announces at once, so a transaction keeps a fast path through half the links. If the
    /// peer announces the transaction while we hold ours back, ours is dropped; otherwise it
    /// goes out when due, batched with the others held for that peer at least half as long.
    /// Without it, two peers that get a transaction at about the same time announce it to each
    /// other, and about a quarter of all links carry two announcements of each transaction.
    /// Zero turns it off.
    ///
    /// [`AnnounceOrder`]: crate::relay::AnnounceOrder
    pub announce_yield: Duration,
    /// How long a request may stay unanswered before asking another announcer.
    pub request_timeout: Duration,
    /// How many other announcers to try after a timeout.
    pub max_retries: u8,
    /// Items one peer may request from us per second (a transaction or challenge counts 1, a
    /// `BlockTxnsRequest` position 1, a full block [`BLOCK_REQUEST_COST`]); a request beyond it
    /// is dropped unanswered and costs the peer a `RequestFlood` penalty.
    pub request_rate: f64,
    /// Items a peer may request in one burst above `request_rate`.
    pub request_burst: f64,
    /// Most bytes queued toward one peer; a peer that lets its queue fill is slow and dropped.
    pub max_peer_queue_bytes: usize,
    /// Validators asked to check each solution.
    pub solution_validators: usize,
    /// Agreeing verdicts that settle a solution.
    pub verdict_quorum: usize,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig {
            tx_strategy: Strategy::Gossip,
            challenge_strategy: Strategy::Directed,
            max_hops: 7,
            gossip_factor: Fanout::Sqrt,
            push_relayed_txs: false,
            // Bitcoin Core's 8 full-relay outbound peers: a random 8-out graph of 50 or 5,000
            // nodes is connected with a diameter of a few hops.
            max_relay_peers: 8,
            duplicate_cache_size: 10_000,
            batch_size: 100,
            // A few ms: enough to coalesce a burst, far below one network hop.
            batch_delay: Duration::from_millis(5),
            // Measured with devnet-load (20 processes, 100 tx/s): see the commit that set it.
            announce_interval: Duration::from_millis(100),
            // Measured in the propagation bench (50 nodes, 8 peers each, inter-region delays):
            // 300-500 ms cut crossed announcements from 24% to 7-12% of links; 0 ms costs ~3%
            // more transaction bytes, 500 ms ~250 ms more median latency.
            announce_yield: Duration::from_millis(400),
            // Above a slow intercontinental round trip (~300 ms) with margin.
            request_timeout: Duration::from_millis(1_000),
            max_retries: 3,
            // Four maximum-size blocks: a healthy peer never lags that far behind.
            max_peer_queue_bytes: 4 * playergold_primitives::MAX_BLOCK_BYTES,
            // A node pulls each transaction once, from one of its ~8 peers: 2,000 items/s from
            // one peer is a network of several thousand tx/s, far above what a peer asks of us
            // honestly, and a block's worth of positions fits the burst many times over.
            request_rate: 2_000.0,
            request_burst: 4_000.0,
            solution_validators: 3,
            verdict_quorum: 2,
        }
    }
}
