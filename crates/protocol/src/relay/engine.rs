//! The propagation engine: who gets what, when, and what to do with what arrives.
//!
//! A plain struct with no I/O and no clock: feed it `(now, peer, message)` and local submissions,
//! let it consult the chain through [`RelayHost`], then drain what it wants sent with
//! [`RelayEngine::poll_transmit`], what happened with [`RelayEngine::poll_event`], and call
//! [`RelayEngine::handle_timeout`] at [`RelayEngine::poll_timeout`].
//!
//! Blocks are relayed before they are imported (BIP152's high-bandwidth mode): a compact block
//! whose header checks out (linkage, producer, signature) is queued at once to the peers of the
//! relay set that lack it (every peer, for our own block), and its body's rebuild from the
//! mempool and its import (the transactions' signatures, the store commit) are left pending.
//! An adapter that cares about latency uses the two-phase calls
//! [`RelayEngine::handle_message_deferred`] / [`RelayEngine::propagate_new_block`], sends what
//! [`RelayEngine::poll_transmit`] gives, and only then calls
//! [`RelayEngine::run_pending_imports`]; [`RelayEngine::handle_message`] does both phases in one
//! call. Bodies are served (`Block`, `BlockTxns`) only once the chain has validated them;
//! requests that arrive while a block is still being rebuilt or imported are answered when its
//! import settles.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use playergold_primitives::{Block, BlockHash, BlockHeader, PublicKey, Transaction, TxId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::bounded::{BoundedMap, BoundedSet};
use super::config::{BLOCK_REQUEST_COST, PropagationConfig, Strategy};
use super::messages::{
    AnnounceOrder, CLASSES, Class, CompactBlock, InvItem, RelayMessage, ShortId, TxSalt, TxShortId,
    TxShortIds,
};
use crate::ai::{Challenge, ChallengeId, Solution, SolutionId, Verdict};
use crate::capabilities::Capabilities;
use crate::rate::RateLimiter;

/// Ids remembered per peer as "known to have". 4,096 × ~40 bytes × 50 peers ≈ 8 MiB at most.
pub const MAX_KNOWN_PER_PEER: usize = 4_096;
/// Items we are waiting for (announced, not yet received). Beyond this, new announcements are
/// ignored until requests complete: a flood of announcements cannot grow our memory.
pub const MAX_WANTED: usize = 20_000;
/// Announcers remembered per wanted item, to retry from.
pub const MAX_ANNOUNCERS: usize = 8;
/// Short ids we announced to one peer, remembered to serve its `RequestTxs` (it asks within a
/// round trip; 2,048 covers a second of a 2,000 tx/s flow). 2,048 × ~60 bytes × 50 peers ≈
/// 6 MiB at most.
pub const MAX_ANNOUNCED_PER_PEER: usize = 2_048;
/// Announcements yielded toward one peer at once (see
/// [`PropagationConfig::announce_yield`]); beyond it they go out at once. 4,096 × 40 bytes ×
/// 50 peers ≈ 8 MiB at most.
pub(crate) const MAX_DEFERRED_PER_PEER: usize = 4_096;
/// Compact blocks being rebuilt at once.
pub const MAX_PARTIAL_BLOCKS: usize = 16;
/// Recently assembled blocks kept to answer `BlockTxnsRequest` before the chain has them.
pub const RECENT_BLOCKS: usize = 8;
/// Block imports waiting for [`RelayEngine::run_pending_imports`]. An adapter runs them after
/// every flush, so one or two wait at a time; if it falls this far behind, the oldest is imported
/// on the spot (nothing is dropped, it only loses the relay-first ordering).
pub const MAX_PENDING_IMPORTS: usize = 16;
/// Blocks with requests waiting for their import to settle (rebuilding, fetching or importing:
/// at most `MAX_PARTIAL_BLOCKS + MAX_PENDING_IMPORTS` at once). Beyond this the oldest waiters
/// are forgotten; their requests time out at the requester, which falls back as for any loss.
pub const MAX_WAITED_BLOCKS: usize = MAX_PARTIAL_BLOCKS + MAX_PENDING_IMPORTS;
/// Waiting requests per block (one per peer: about the peers a block is relayed to). Beyond this
/// a request is answered `NotFound` at once. A waiting `BlockTxnsRequest` holds at most
/// `MAX_BLOCK_TXS` positions (20 KB), so all waiters together stay under
/// `MAX_WAITED_BLOCKS` × 64 × 20 KB ≈ 40 MB even if every peer asks for every block.
pub const MAX_WAITERS_PER_BLOCK: usize = 64;
/// Challenges (and where each came from) remembered, to route solutions back.
pub const MAX_CHALLENGES: usize = 1_024;
/// Solutions whose verdicts are being counted.
pub const MAX_TALLIES: usize = 1_024;

/// Types usable as peer ids (libp2p's `PeerId` in the node, small integers in tests).
pub trait PeerKey: Copy + Eq + Hash + Ord + Debug {}
impl<T: Copy + Eq + Hash + Ord + Debug> PeerKey for T {}

/// What the host made of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxVerdict {
    /// New and valid: relay it.
    Accepted,
    /// Already had it.
    Known,
    /// Invalid (bad signature, malformed): the sender is penalised.
    Invalid,
    /// Valid but not taken for a local reason (mempool full, fee too low): no relay, no penalty.
    Refused,
}

/// What the host made of a block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderVerdict {
    /// Links to a known parent, right producer, valid signature.
    Valid,
    /// Already have the block.
    Known,
    /// Invalid: the sender is penalised.
    Invalid,
    /// Parent unknown: sync must fetch it first.
    UnknownParent,
}

/// What the host made of a full block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockVerdict {
    /// Validated and stored.
    Imported,
    /// Already had it.
    Known,
    /// Stored as an orphan; its parent is missing.
    Orphan,
    /// Invalid: the sender is penalised.
    Invalid,
    /// Not taken for a local reason (store error, timestamp slightly ahead): no penalty.
    Refused,
}

/// The engine's view of the chain and mempool. The node implements it over `ChainBackend`.
pub trait RelayHost {
    /// Validates a transaction and adds it to the mempool.
    fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict;
    /// Validates transactions and adds them to the mempool: one verdict each, in order, the same
    /// as [`submit_transaction`](Self::submit_transaction) on each in turn would give (a second
    /// copy of an id is `Known`). Hosts override it to check signatures together and take their
    /// locks once; a `Transactions` batch from a peer goes through here.
    fn submit_transactions(&mut self, txs: Vec<Transaction>) -> Vec<TxVerdict> {
        txs.into_iter()
            .map(|tx| self.submit_transaction(tx))
            .collect()
    }
    /// A mempool transaction.
    fn transaction(&self, id: &TxId) -> Option<Transaction>;
    /// Mempool transactions, one answer per id in order. Hosts override it to take their lock
    /// once: a compact block's rebuild looks up every transaction of the block.
    fn transactions(&self, ids: &[TxId]) -> Vec<Option<Transaction>> {
        ids.iter().map(|id| self.transaction(id)).collect()
    }
    /// Whether we have the transaction (mempool or chain).
    fn has_transaction(&self, id: &TxId) -> bool;
    /// Ids of every mempool transaction (compact-block rebuilding).
    fn mempool_ids(&self) -> Vec<TxId>;
    /// Checks a header: linkage, producer, signature.
    fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict;
    /// Validates and imports a full block.
    fn submit_block(&mut self, block: Block) -> BlockVerdict;
    /// A stored block.
    fn block(&self, hash: &BlockHash) -> Option<Block>;
    /// Whether we have the block.
    fn has_block(&self, hash: &BlockHash) -> bool;
}

/// Misbehaviour the engine saw; the reputation layer decides what each costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offence {
    /// A transaction that failed validation.
    InvalidTransaction,
    /// A block header that failed validation.
    InvalidHeader,
    /// A block whose body failed validation (its header was valid: possibly relayed in good faith).
    InvalidBlockBody,
    /// A challenge, solution or verdict with a bad signature.
    InvalidAiMessage,
    /// A reply that does not match what we asked.
    MalformedReply,
    /// Data we never asked for.
    Unrequested,
    /// A request we made timed out.
    RequestTimeout,
    /// Requests beyond the per-peer rate (`PropagationConfig::request_rate`): dropped.
    RequestFlood,
}

/// Something the node should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent<P> {
    /// A peer misbehaved.
    Penalty {
        /// The peer.
        peer: P,
        /// What it did.
        offence: Offence,
    },
    /// A peer let its queue fill up: disconnect it.
    SlowPeer(P),
    /// A peer delivered something new and valid first (reputation rewards this).
    UsefulDelivery(P),
    /// A new valid transaction entered the mempool.
    NewTransaction {
        /// Its id.
        id: TxId,
        /// Who sent it (`None`: local).
        from: Option<P>,
    },
    /// A peer's block is here whole (rebuilt from its compact form, or received in full) under
    /// a header that checked out (linked, right producer, signed); its import follows, and
    /// [`RelayEvent::NewBlock`] says when it succeeded. The moment a node has the block, as a
    /// gossip layer that delivers before validation would report it.
    BlockReceived {
        /// Its hash.
        hash: BlockHash,
        /// Who sent it (the compact block's sender).
        from: P,
    },
    /// A new block was imported.
    NewBlock {
        /// Its hash.
        hash: BlockHash,
        /// Who sent it (`None`: local).
        from: Option<P>,
    },
    /// A block's parent is unknown: sync should fetch it from `peer`.
    MissingParent {
        /// The block.
        hash: BlockHash,
        /// Its missing parent.
        parent: BlockHash,
        /// Who has it.
        peer: P,
    },
    /// A challenge arrived (solve it if this node is `ai-compute`).
    ChallengeReceived {
        /// The challenge.
        challenge: Box<Challenge>,
        /// Who sent it.
        from: P,
    },
    /// We were asked to validate a solution: verify it and call `submit_verdict`.
    SolutionToVerify {
        /// The challenge.
        challenge: Box<Challenge>,
        /// The solution.
        solution: Box<Solution>,
    },
    /// A solution reached a quorum of agreeing verdicts.
    SolutionSettled(Box<Settlement>),
}

/// The outcome of a solution's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The challenge.
    pub challenge: ChallengeId,
    /// The solution.
    pub solution: SolutionId,
    /// Its solver.
    pub solver: PublicKey,
    /// The quorum's judgement.
    pub valid: bool,
    /// Every validator heard from and its verdict (validators in the minority lose reputation).
    pub verdicts: Vec<(PublicKey, bool)>,
}

/// How one deferred block import ended ([`RelayEngine::run_pending_imports`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockImport<P> {
    /// The block.
    pub hash: BlockHash,
    /// Who sent it (`None`: produced here, [`RelayEngine::propagate_new_block`]).
    pub from: Option<P>,
    /// What the host made of it.
    pub verdict: BlockVerdict,
}

/// Counters per item kind (monotonic; Prometheus derives rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounters {
    /// New valid items received from peers.
    pub received: u64,
    /// Items received that we already had.
    pub duplicates: u64,
    /// Items sent in full to peers.
    pub sent: u64,
}

/// Engine counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayMetrics {
    /// Transactions.
    pub tx: KindCounters,
    /// Blocks.
    pub block: KindCounters,
    /// Compact blocks rebuilt without any request.
    pub compact_rebuilt: u64,
    /// Compact blocks that needed missing transactions requested.
    pub compact_partial: u64,
    /// Compact blocks that fell back to a full block transfer.
    pub compact_fallback: u64,
    /// Requests retried from another announcer.
    pub retries: u64,
    /// Peers dropped for a full queue.
    pub slow_peers: u64,
    /// Requests dropped for exceeding the per-peer request rate.
    pub requests_refused: u64,
    /// Slowness offences not reported because the peer was blamed for slowness less than a
    /// `request_timeout` before.
    pub slowness_forgiven: u64,
    /// Yielded announcements dropped because the peer told us of the transaction first.
    pub announcements_yielded: u64,
    /// Short-id announcements received for transactions we had announced to the same peer:
    /// the two crossed on the link (each crossing counts at both ends).
    pub announcements_crossed: u64,
}

#[derive(Debug, Default)]
struct PeerQueue {
    classes: [VecDeque<RelayMessage>; CLASSES],
    bytes: usize,
}

#[derive(Debug)]
struct Peer {
    caps: Capabilities,
    known: BoundedSet<InvItem>,
    queue: PeerQueue,
    pending_txs: Vec<Transaction>,
    pending_announce: Vec<InvItem>,
    /// Transaction announcements as short ids under the peer's salt.
    pending_short: Vec<TxShortId>,
    /// The peer's short-id function (from its hello); `None`: it gets full-id announcements.
    short_ids: Option<TxShortIds>,
    /// Which side of the link yields on which transaction (from both salts).
    order: Option<AnnounceOrder>,
    /// What we announced to it by short id, to serve its requests.
    announced: BoundedMap<TxShortId, TxId>,
    /// Announcements this side of the link yields on (see
    /// [`PropagationConfig::announce_yield`]): sent when due unless the peer told us of the
    /// transaction first. Due times only grow, so the front is the next due.
    deferred: VecDeque<(Instant, TxId)>,
    batch_deadline: Option<Instant>,
    slow: bool,
    /// Whether it is in our relay set (at most `max_relay_peers`): we push transactions and
    /// relayed blocks to it.
    relay: bool,
    /// When the peer was last blamed for slowness (a timeout, a late or surplus message): at
    /// most once per `request_timeout` (see [`RelayEngine::blame_slow`]).
    slow_blamed: Option<Instant>,
}

#[derive(Debug)]
struct Wanted<P> {
    announcers: VecDeque<P>,
    asked: Option<(P, Instant)>,
    retries: u8,
    /// Announcers asked before and given up on (they have the item too).
    tried: Vec<P>,
    /// A transaction's full id, once some peer announced it by full id (short-id waits only):
    /// requests then name it in full, which every peer can serve.
    full: Option<TxId>,
}

impl Peer {
    /// Queues an announcement of transaction `id` by its short id under the peer's salt, and
    /// remembers it as announced; `false` (nothing queued) when the peer sent no salt.
    fn announce_short(&mut self, id: TxId) -> bool {
        let Some(short_ids) = &self.short_ids else {
            return false;
        };
        let short = short_ids.of(&id);
        self.known.insert(InvItem::Tx(id));
        self.announced.insert(short, id);
        self.pending_short.push(short);
        true
    }
}

impl<P: PeerKey> Wanted<P> {
    /// A wait whose first request goes to `peer` and is due by `deadline`.
    fn asking(peer: P, deadline: Instant, full: Option<TxId>) -> Self {
        Wanted {
            announcers: VecDeque::new(),
            asked: Some((peer, deadline)),
            retries: 0,
            tried: Vec::new(),
            full,
        }
    }

    /// Whether the current request went to `peer`.
    fn asked(&self, peer: P) -> bool {
        matches!(self.asked, Some((p, _)) if p == peer)
    }

    /// Moves the request to the next announcer, due by `deadline`, while retries are left;
    /// `None` when the wait should end.
    fn next_announcer(&mut self, max_retries: u8, deadline: Instant) -> Option<P> {
        if self.retries >= max_retries {
            return None;
        }
        let peer = self.announcers.pop_front()?;
        self.retries += 1;
        if let Some((before, _)) = self.asked.replace((peer, deadline)) {
            self.tried.push(before);
        }
        Some(peer)
    }
}

/// The waits of `wanted` whose request is overdue at `now`, with the peer asked.
fn overdue<K: Copy, P: PeerKey>(wanted: &HashMap<K, Wanted<P>>, now: Instant) -> Vec<(K, P)> {
    wanted
        .iter()
        .filter_map(|(key, w)| match w.asked {
            Some((p, t)) if t <= now => Some((*key, p)),
            _ => None,
        })
        .collect()
}

#[derive(Debug)]
struct PartialBlock<P> {
    header: BlockHeader,
    txs: Vec<Option<Transaction>>,
    from: P,
    /// Other peers that sent the same compact block: asked for the full block if `from` fails.
    alternates: Vec<P>,
    deadline: Instant,
    /// Positions asked for in the `BlockTxnsRequest`, in order (its reply fills them).
    requested: Vec<u32>,
    /// Short ids of the positions still empty: a transaction relayed to us meanwhile fills its
    /// slot, and the block completes without waiting for the reply.
    missing: HashMap<ShortId, u32>,
}

/// Where a block waiting for import came from, which decides what its import verdict means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Rebuilt from a compact block that was already relayed on its valid header.
    Compact,
    /// A full block (requested after a failed rebuild): relayed once imported.
    Full,
    /// Produced here and already pushed.
    Local,
}

/// A compact block relayed on its valid header whose body is still to be rebuilt from the mempool
/// (after the relayed frames have left: the rebuild maps every mempool transaction to its short
/// id, a fraction of a millisecond that would otherwise delay every hop).
#[derive(Debug)]
struct PendingRebuild<P> {
    hash: BlockHash,
    cb: CompactBlock,
    from: P,
    /// Other peers that sent the same compact block meanwhile.
    alternates: Vec<P>,
}

#[derive(Debug)]
struct PendingImport<P> {
    hash: BlockHash,
    block: Block,
    from: Option<P>,
    alternates: Vec<P>,
    source: Source,
}

/// A request for a block we are still completing, answered when its import settles.
#[derive(Debug)]
enum Waiter {
    /// `Request(Block)`.
    Block,
    /// `BlockTxnsRequest` for these positions.
    Txns(Vec<u32>),
}

#[derive(Debug, Default)]
struct Tally {
    solver: Option<PublicKey>,
    challenge: Option<ChallengeId>,
    verdicts: Vec<(PublicKey, bool)>,
    settled: bool,
}

/// The propagation engine, generic over the peer id type.
#[derive(Debug)]
pub struct RelayEngine<P: PeerKey> {
    config: PropagationConfig,
    rng: StdRng,
    peers: HashMap<P, Peer>,
    seen: BoundedSet<InvItem>,
    wanted: HashMap<InvItem, Wanted<P>>,
    /// Our salt for the short ids peers announce to us, and its function.
    salt: TxSalt,
    short_ids: TxShortIds,
    /// Short ids (under our salt) of the transactions we have seen, as long as `seen` holds
    /// about as many.
    short_index: BoundedMap<TxShortId, TxId>,
    /// Transactions announced to us by short id and not received yet.
    wanted_short: HashMap<TxShortId, Wanted<P>>,
    partials: HashMap<BlockHash, PartialBlock<P>>,
    /// Compact blocks to rebuild in `run_pending_imports` (at most `MAX_PENDING_IMPORTS`).
    pending_rebuilds: VecDeque<PendingRebuild<P>>,
    pending_imports: VecDeque<PendingImport<P>>,
    /// Outcomes of imports not yet returned by `run_pending_imports` (bounded by
    /// `MAX_PENDING_IMPORTS`: `handle_message` imports without returning them).
    settled: VecDeque<BlockImport<P>>,
    waiters: BoundedMap<BlockHash, Vec<(P, Waiter)>>,
    /// Bodies the chain validated (or we produced and imported), served before the store has
    /// them at hand.
    recent_blocks: BoundedMap<BlockHash, Block>,
    /// Blocks completed from relayed transactions before `BlockTxns` came, with the peer asked:
    /// its late reply is expected, not unrequested.
    completed_early: BoundedMap<BlockHash, P>,
    challenges: BoundedMap<ChallengeId, (Challenge, Option<P>)>,
    tallies: BoundedMap<SolutionId, Tally>,
    events: VecDeque<RelayEvent<P>>,
    metrics: RelayMetrics,
    /// Items each peer may request per second (`request_rate`, `request_burst`).
    request_limit: RateLimiter<P>,
}

impl<P: PeerKey> RelayEngine<P> {
    /// A new engine. `seed` drives the gossip subset choice (tests pass a fixed one).
    pub fn new(config: PropagationConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let salt = TxSalt(rng.r#gen());
        let request_limit = RateLimiter::new(config.request_rate, config.request_burst);
        RelayEngine {
            seen: BoundedSet::new(config.duplicate_cache_size),
            salt,
            short_ids: TxShortIds::new(salt),
            short_index: BoundedMap::new(config.duplicate_cache_size),
            wanted_short: HashMap::new(),
            config,
            rng,
            peers: HashMap::new(),
            wanted: HashMap::new(),
            partials: HashMap::new(),
            pending_rebuilds: VecDeque::new(),
            pending_imports: VecDeque::new(),
            settled: VecDeque::new(),
            waiters: BoundedMap::new(MAX_WAITED_BLOCKS),
            recent_blocks: BoundedMap::new(RECENT_BLOCKS),
            completed_early: BoundedMap::new(MAX_PARTIAL_BLOCKS),
            challenges: BoundedMap::new(MAX_CHALLENGES),
            tallies: BoundedMap::new(MAX_TALLIES),
            events: VecDeque::new(),
            metrics: RelayMetrics::default(),
            request_limit,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PropagationConfig {
        &self.config
    }

    /// The salt peers use for the short ids of transactions they announce to us (send it in
    /// the relay hello).
    pub fn tx_salt(&self) -> TxSalt {
        self.salt
    }

    /// `peer`'s salt from its hello: from now on it gets transaction announcements as short ids.
    pub fn set_peer_tx_salt(&mut self, peer: &P, salt: TxSalt) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.short_ids = Some(TxShortIds::new(salt));
            p.order = Some(AnnounceOrder::new(self.salt, salt));
        }
    }

    /// The counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.metrics
    }

    /// A peer connected (and speaks the relay protocol).
    pub fn add_peer(&mut self, peer: P, caps: Capabilities) {
        if self.peers.contains_key(&peer) {
            return;
        }
        let relay = self.join_relay_set();
        self.peers.entry(peer).or_insert_with(|| Peer {
            caps,
            known: BoundedSet::new(MAX_KNOWN_PER_PEER),
            queue: PeerQueue::default(),
            pending_txs: Vec::new(),
            pending_announce: Vec::new(),
            pending_short: Vec::new(),
            short_ids: None,
            order: None,
            announced: BoundedMap::new(MAX_ANNOUNCED_PER_PEER),
            deferred: VecDeque::new(),
            batch_deadline: None,
            slow: false,
            relay,
            slow_blamed: None,
        });
    }

    /// The peers in (`true`) or out of (`false`) the relay set, in order, so that the random
    /// choices among them do not depend on the map's order.
    fn relay_members(&self, in_set: bool) -> Vec<P> {
        let mut out: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.relay == in_set)
            .map(|(k, _)| *k)
            .collect();
        out.sort();
        out
    }

    /// Whether a peer about to be added joins the relay set: while the set has
    /// room, yes; after that with probability `max / peers`, in place of a random member
    /// (reservoir sampling). The set stays a uniform sample of our peers, so the peers every
    /// node meets first (a bootstrap node) do not end up in everyone's set.
    fn join_relay_set(&mut self) -> bool {
        let max = self.config.max_relay_peers;
        let members = self.relay_members(true);
        if members.len() < max {
            return true;
        }
        if max == 0 || self.rng.gen_range(0..=self.peers.len()) >= max {
            return false;
        }
        let out = members[self.rng.gen_range(0..members.len())];
        if let Some(p) = self.peers.get_mut(&out) {
            p.relay = false;
        }
        true
    }

    /// Whether `peer` is in our relay set (we push transactions and relayed blocks to it).
    pub fn in_relay_set(&self, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| p.relay)
    }

    /// A peer's capabilities changed (identify arrived after connection).
    pub fn set_capabilities(&mut self, peer: P, caps: Capabilities) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.caps = caps;
        }
    }

    /// A peer disconnected: forget its state; its outstanding requests go to other announcers at
    /// their timeout.
    pub fn remove_peer(&mut self, peer: &P) {
        let was_relay = self.peers.remove(peer).is_some_and(|p| p.relay);
        if was_relay {
            // Fill its place in the relay set with a random other peer.
            if let Some(p) = self
                .relay_members(false)
                .choose(&mut self.rng)
                .and_then(|k| self.peers.get_mut(k))
            {
                p.relay = true;
            }
        }
        for w in self
            .wanted
            .values_mut()
            .chain(self.wanted_short.values_mut())
        {
            w.announcers.retain(|a| a != peer);
        }
    }

    /// Connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Bytes queued toward `peer`.
    pub fn queued_bytes(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.queue.bytes)
    }

    // ---- outputs ---------------------------------------------------------------------------

    /// The next message for `peer`, highest class first.
    pub fn poll_transmit(&mut self, peer: &P) -> Option<RelayMessage> {
        let p = self.peers.get_mut(peer)?;
        for class in &mut p.queue.classes {
            if let Some(msg) = class.pop_front() {
                p.queue.bytes = p.queue.bytes.saturating_sub(msg.encoded_len());
                return Some(msg);
            }
        }
        None
    }

    /// Peers with something queued.
    pub fn peers_with_pending(&self) -> Vec<P> {
        let mut out: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.queue.classes.iter().any(|c| !c.is_empty()))
            .map(|(k, _)| *k)
            .collect();
        out.sort();
        out
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayEvent<P>> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let batches = self.peers.values().flat_map(|p| {
            p.batch_deadline
                .into_iter()
                .chain(p.deferred.front().map(|(due, _)| *due))
        });
        let requests = self
            .wanted
            .values()
            .chain(self.wanted_short.values())
            .filter_map(|w| w.asked.map(|(_, t)| t));
        let partials = self.partials.values().map(|p| p.deadline);
        batches.chain(requests).chain(partials).min()
    }

    /// Flushes due batches and retries timed-out requests.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.batch_deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            self.flush(&peer);
        }
        self.release_deferred(now);
        for (item, peer) in overdue(&self.wanted, now) {
            self.blame_slow(now, peer, Offence::RequestTimeout);
            self.retry(now, item);
        }
        for (id, peer) in overdue(&self.wanted_short, now) {
            self.blame_slow(now, peer, Offence::RequestTimeout);
            self.retry_short(now, id);
        }
        let stale: Vec<BlockHash> = self
            .partials
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(h, _)| *h)
            .collect();
        for hash in stale {
            if let Some(partial) = self.partials.remove(&hash) {
                // The missing transactions never came: fall back to the full block.
                self.metrics.compact_fallback += 1;
                self.want_from(now, hash, partial.from, partial.alternates);
            }
        }
    }

    // ---- local submissions -----------------------------------------------------------------

    /// A transaction submitted locally: validate through the host, then propagate.
    pub fn submit_transaction(
        &mut self,
        now: Instant,
        tx: Transaction,
        host: &mut impl RelayHost,
    ) -> Result<TxId, TxVerdict> {
        let id = tx.id();
        match host.submit_transaction(tx.clone()) {
            TxVerdict::Accepted => {
                self.note_tx(id);
                self.events
                    .push_back(RelayEvent::NewTransaction { id, from: None });
                self.relay_tx(now, tx, None);
                Ok(id)
            }
            other => Err(other),
        }
    }

    /// A block this node produced and already imported: push it compact to every peer.
    pub fn propagate_block(&mut self, _now: Instant, block: Block) {
        let hash = block.hash();
        self.seen.insert(InvItem::Block(hash));
        self.relay_block(&block, None);
        self.recent_blocks.insert(hash, block);
    }

    /// A block this node produced and has not imported yet: if its header checks out, push it
    /// compact to every peer now, and leave its import pending, so that the push leaves before
    /// the import's cost. Send what `poll_transmit` gives, then call
    /// [`run_pending_imports`](Self::run_pending_imports): its outcome (`from: None`) says
    /// whether the chain took the block. A block whose header fails is not pushed; its import
    /// still runs, to report why.
    pub fn propagate_new_block(&mut self, now: Instant, block: Block, host: &mut impl RelayHost) {
        let hash = block.hash();
        // `Known`: the producer imported it already, which is fine.
        if matches!(
            host.check_header(&block.header),
            HeaderVerdict::Valid | HeaderVerdict::Known
        ) {
            self.seen.insert(InvItem::Block(hash));
            self.relay_block(&block, None);
        }
        self.queue_import(
            now,
            PendingImport {
                hash,
                block,
                from: None,
                alternates: Vec::new(),
                source: Source::Local,
            },
            host,
        );
    }

    /// Whether block rebuilds or imports wait for
    /// [`run_pending_imports`](Self::run_pending_imports).
    pub fn has_pending_imports(&self) -> bool {
        !self.pending_rebuilds.is_empty() || !self.pending_imports.is_empty()
    }

    /// Rebuilds the compact blocks left pending by
    /// [`handle_message_deferred`](Self::handle_message_deferred), oldest first: a complete one
    /// is reported ([`RelayEvent::BlockReceived`]) and waits for its import, an incomplete one
    /// queues the request for its missing transactions. [`Self::run_pending_imports`] runs
    /// them too; calling this first lets an adapter send those requests before the imports.
    pub fn run_pending_rebuilds(&mut self, now: Instant, host: &mut impl RelayHost) {
        while let Some(pending) = self.pending_rebuilds.pop_front() {
            self.rebuild(now, pending, host);
        }
    }

    /// Rebuilds the compact blocks and imports the blocks left pending by
    /// [`handle_message_deferred`](Self::handle_message_deferred) and
    /// [`propagate_new_block`](Self::propagate_new_block), oldest first, and returns how every
    /// import since the last call ended. A rebuild that lacks transactions queues their request
    /// (send what `poll_transmit` gives afterwards). Call it after sending what `poll_transmit` gives, so
    /// blocks relayed on their header leave before their bodies are checked.
    pub fn run_pending_imports(
        &mut self,
        now: Instant,
        host: &mut impl RelayHost,
    ) -> Vec<BlockImport<P>> {
        self.import_pending(now, host);
        self.settled.drain(..).collect()
    }

    /// Issues a challenge: sends it per the challenge strategy.
    pub fn broadcast_challenge(&mut self, _now: Instant, challenge: Challenge) {
        let id = challenge.id();
        self.seen.insert(InvItem::Challenge(id));
        self.challenges.insert(id, (challenge.clone(), None));
        self.forward_challenge(challenge, None);
    }

    /// Sends `msg` to the given peers (`directed` strategy with explicit targets).
    pub fn send_directed(&mut self, peers: &[P], msg: RelayMessage) {
        let class = msg.class();
        for peer in peers {
            self.enqueue(peer, class, msg.clone());
        }
    }

    /// A solution this node computed: back toward the issuer, and to validators for checking.
    pub fn submit_solution(&mut self, solution: Solution) {
        let sid = solution.id();
        self.seen.insert(InvItem::Solution(sid));
        let Some((challenge, origin)) = self.challenges.get(&solution.body.challenge).cloned()
        else {
            return;
        };
        self.tally_for(sid, &solution);
        if let Some(origin) = origin {
            self.enqueue(
                &origin,
                Class::Ai,
                RelayMessage::Solution {
                    solution: solution.clone(),
                    challenge: None,
                },
            );
        }
        let mut validators: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.caps.contains(Capabilities::AI_COMPUTE))
            .map(|(k, _)| *k)
            .collect();
        validators.sort();
        validators.shuffle(&mut self.rng);
        validators.truncate(self.config.solution_validators);
        for v in validators {
            self.enqueue(
                &v,
                Class::Ai,
                RelayMessage::Solution {
                    solution: solution.clone(),
                    challenge: Some(challenge.clone()),
                },
            );
        }
    }

    /// A verdict this node signed: count it and spread it.
    pub fn submit_verdict(&mut self, verdict: Verdict) {
        if self.seen.insert(InvItem::Verdict(verdict.id())) {
            self.count_verdict(&verdict);
            self.flood(
                InvItem::Verdict(verdict.id()),
                RelayMessage::Verdict(verdict),
                None,
            );
        }
    }

    // ---- peer input ------------------------------------------------------------------------

    /// Handles one message from `peer`, block imports included (relayed frames queued by it
    /// leave after the import; [`handle_message_deferred`](Self::handle_message_deferred) lets
    /// them leave first).
    pub fn handle_message(
        &mut self,
        now: Instant,
        peer: P,
        msg: RelayMessage,
        host: &mut impl RelayHost,
    ) {
        self.handle_message_deferred(now, peer, msg, host);
        self.import_pending(now, host);
    }

    /// Handles one message from `peer`, leaving any block import it leads to pending: send what
    /// `poll_transmit` gives, then call [`run_pending_imports`](Self::run_pending_imports).
    pub fn handle_message_deferred(
        &mut self,
        now: Instant,
        peer: P,
        msg: RelayMessage,
        host: &mut impl RelayHost,
    ) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let cost = match &msg {
            RelayMessage::Request(items) => items
                .iter()
                .map(|i| match i {
                    InvItem::Block(_) => BLOCK_REQUEST_COST,
                    _ => 1.0,
                })
                .sum(),
            RelayMessage::RequestTxs(ids) => ids.len() as f64,
            RelayMessage::RequestTx(_) => 1.0,
            RelayMessage::BlockTxnsRequest { indexes, .. } => indexes.len() as f64,
            _ => 0.0,
        };
        if cost > 0.0 && !self.request_limit.allow(peer, cost, now) {
            self.metrics.requests_refused += 1;
            self.blame_slow(now, peer, Offence::RequestFlood);
            return;
        }
        match msg {
            RelayMessage::Announce(items) => self.on_announce(now, peer, items, host),
            RelayMessage::Request(items) => self.on_request(peer, items, host),
            RelayMessage::NotFound(items) => {
                for item in items {
                    if let InvItem::Tx(full) = item {
                        let id = self.short_ids.of(&full);
                        if self.wanted_short.get(&id).is_some_and(|w| w.asked(peer)) {
                            self.retry_short(now, id);
                        }
                        continue;
                    }
                    if self.wanted.get(&item).is_some_and(|w| w.asked(peer)) {
                        self.retry(now, item);
                    }
                }
            }
            RelayMessage::Transactions(txs) => self.on_transactions(now, peer, txs, host),
            RelayMessage::CompactBlock(cb) => self.on_compact_block(now, peer, cb, host),
            RelayMessage::BlockTxnsRequest { block, indexes } => {
                self.on_block_txns_request(peer, block, indexes, host)
            }
            RelayMessage::BlockTxns { block, txs } => {
                self.on_block_txns(now, peer, block, txs, host)
            }
            RelayMessage::Block(block) => self.on_block(now, peer, block, host),
            RelayMessage::Challenge(c) => self.on_challenge(peer, c),
            RelayMessage::Solution {
                solution,
                challenge,
            } => self.on_solution(peer, solution, challenge),
            RelayMessage::Verdict(v) => self.on_verdict(peer, v),
            RelayMessage::AnnounceTxs(ids) => self.on_announce_txs(now, peer, ids),
            RelayMessage::AnnounceTx(id) => self.on_announce_txs(now, peer, vec![id]),
            RelayMessage::RequestTxs(ids) => self.on_request_txs(peer, ids, host),
            RelayMessage::RequestTx(id) => self.on_request_txs(peer, vec![id], host),
            RelayMessage::TxsNotFound(ids) => {
                for id in ids {
                    if self.wanted_short.get(&id).is_some_and(|w| w.asked(peer)) {
                        self.retry_short(now, id);
                    }
                }
            }
        }
    }

    /// Remembers transaction `id` as seen (by full and short id) and ends any wait for it; the
    /// peers that announced it by short id know it.
    fn note_tx(&mut self, id: TxId) {
        let item = InvItem::Tx(id);
        self.seen.insert(item);
        self.wanted.remove(&item);
        let short = self.short_ids.of(&id);
        self.short_index.insert(short, id);
        if let Some(w) = self.wanted_short.remove(&short) {
            let asked = w.asked.map(|(p, _)| p);
            for peer in w.announcers.into_iter().chain(asked).chain(w.tried) {
                self.mark_known(&peer, item);
            }
        }
    }

    /// Short-id announcements: request the ones we do not know from the first announcer.
    fn on_announce_txs(&mut self, now: Instant, peer: P, ids: Vec<TxShortId>) {
        let mut ask = Vec::new();
        let mut ask_full = Vec::new();
        for id in ids {
            if let Some(tx) = self.short_index.get(&id).copied() {
                if let Some(p) = self.peers.get(&peer)
                    && let Some(theirs) = p.short_ids.as_ref().map(|s| s.of(&tx))
                    && p.announced.get(&theirs).is_some()
                {
                    self.metrics.announcements_crossed += 1;
                }
                self.mark_known(&peer, InvItem::Tx(tx));
                continue;
            }
            match self.want_tx(now, peer, id, None) {
                Some(None) => ask.push(id),
                Some(Some(full)) => ask_full.push(InvItem::Tx(full)),
                None => {}
            }
        }
        if !ask.is_empty() {
            self.enqueue(&peer, Class::Reply, RelayMessage::request_txs(ask));
        }
        if !ask_full.is_empty() {
            self.enqueue(&peer, Class::Reply, RelayMessage::Request(ask_full));
        }
    }

    /// `peer` announced a transaction we lack, by short id `id` (under our salt) and maybe its
    /// full id. Full-id and short-id announcements of one transaction share one wait, keyed by
    /// its short id. Returns what to ask `peer` for now: `Some(None)` the short id,
    /// `Some(Some(full))` the full id; `None` if the transaction is already asked for (then
    /// `peer` is a fallback) or too many are.
    fn want_tx(
        &mut self,
        now: Instant,
        peer: P,
        id: TxShortId,
        full: Option<TxId>,
    ) -> Option<Option<TxId>> {
        let room = self.wanted_short.len() < MAX_WANTED;
        match self.wanted_short.get_mut(&id) {
            Some(w) => {
                if w.full.is_none() {
                    w.full = full;
                }
                let asked = w.asked(peer);
                if !asked && w.announcers.len() < MAX_ANNOUNCERS && !w.announcers.contains(&peer) {
                    w.announcers.push_back(peer);
                }
                None
            }
            None if room => {
                self.wanted_short.insert(
                    id,
                    Wanted::asking(peer, now + self.config.request_timeout, full),
                );
                Some(full)
            }
            None => None,
        }
    }

    /// A peer asks for transactions we announced to it by short id.
    fn on_request_txs(&mut self, peer: P, ids: Vec<TxShortId>, host: &impl RelayHost) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let mut txs = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match p.announced.get(&id).and_then(|tx| host.transaction(tx)) {
                Some(tx) => txs.push(tx),
                None => missing.push(id),
            }
        }
        if !txs.is_empty() {
            self.metrics.tx.sent += txs.len() as u64;
            for chunk in txs.chunks(self.config.batch_size.max(1)) {
                self.enqueue(
                    &peer,
                    Class::Reply,
                    RelayMessage::Transactions(chunk.to_vec()),
                );
            }
        }
        if !missing.is_empty() {
            self.enqueue(&peer, Class::Reply, RelayMessage::TxsNotFound(missing));
        }
    }

    /// The current request for short id `id` failed: ask the next announcer, or give up.
    fn retry_short(&mut self, now: Instant, id: TxShortId) {
        let Some(w) = self.wanted_short.get_mut(&id) else {
            return;
        };
        match w.next_announcer(self.config.max_retries, now + self.config.request_timeout) {
            Some(peer) => {
                self.metrics.retries += 1;
                let msg = match w.full {
                    Some(full) => RelayMessage::Request(vec![InvItem::Tx(full)]),
                    None => RelayMessage::RequestTx(id),
                };
                self.enqueue(&peer, Class::Reply, msg);
            }
            None => {
                self.wanted_short.remove(&id);
            }
        }
    }

    fn mark_known(&mut self, peer: &P, item: InvItem) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.known.insert(item);
        }
    }

    fn penalize(&mut self, peer: P, offence: Offence) {
        self.events.push_back(RelayEvent::Penalty { peer, offence });
    }

    /// Penalises a connected peer for slowness (`offence` is a timeout, a flood of requests or
    /// a late, unrequested message) at most once per `request_timeout`. Requests sent together
    /// time out together, and a busy peer's late answers arrive together: a burst of them is
    /// one slow peer, not hundreds of offences. A peer that has left is not blamed.
    fn blame_slow(&mut self, now: Instant, peer: P, offence: Offence) {
        let window = self.config.request_timeout;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.slow_blamed.is_some_and(|at| now < at + window) {
            self.metrics.slowness_forgiven += 1;
            return;
        }
        p.slow_blamed = Some(now);
        self.penalize(peer, offence);
    }

    fn have(&self, item: &InvItem, host: &impl RelayHost) -> bool {
        self.seen.contains(item)
            || match item {
                InvItem::Tx(id) => host.has_transaction(id),
                InvItem::Block(h) => host.has_block(h),
                InvItem::Challenge(id) => self.challenges.contains_key(id),
                InvItem::Solution(_) | InvItem::Verdict(_) => false,
            }
    }

    fn on_announce(&mut self, now: Instant, peer: P, items: Vec<InvItem>, host: &impl RelayHost) {
        let mut ask = Vec::new();
        for item in items {
            self.mark_known(&peer, item);
            if self.have(&item, host) {
                continue;
            }
            if let InvItem::Tx(full) = item {
                let id = self.short_ids.of(&full);
                if self.want_tx(now, peer, id, Some(full)).is_some() {
                    ask.push(item);
                }
                continue;
            }
            let room = self.wanted.len() < MAX_WANTED;
            match self.wanted.get_mut(&item) {
                Some(w) if w.announcers.len() < MAX_ANNOUNCERS && !w.announcers.contains(&peer) => {
                    w.announcers.push_back(peer);
                }
                Some(_) => {}
                None if room => {
                    self.wanted.insert(
                        item,
                        Wanted::asking(peer, now + self.config.request_timeout, None),
                    );
                    ask.push(item);
                }
                None => {}
            }
        }
        if !ask.is_empty() {
            self.enqueue(&peer, Class::Reply, RelayMessage::Request(ask));
        }
    }

    /// Asks `peer` for `item` now, unless it is already being fetched.
    fn want(&mut self, now: Instant, item: InvItem, peer: P) {
        if self.wanted.contains_key(&item) || self.wanted.len() >= MAX_WANTED {
            return;
        }
        self.wanted.insert(
            item,
            Wanted::asking(peer, now + self.config.request_timeout, None),
        );
        self.enqueue(&peer, Class::Reply, RelayMessage::Request(vec![item]));
    }

    /// Falls back to fetching block `hash` in full from `peer`, then from `alternates` (other
    /// senders of its compact block) on timeout or `NotFound`.
    fn want_from(&mut self, now: Instant, hash: BlockHash, peer: P, alternates: Vec<P>) {
        let item = InvItem::Block(hash);
        self.want(now, item, peer);
        if let Some(w) = self.wanted.get_mut(&item) {
            for a in alternates {
                if w.announcers.len() < MAX_ANNOUNCERS && a != peer && !w.announcers.contains(&a) {
                    w.announcers.push_back(a);
                }
            }
        }
        self.drop_waiters_if_idle(hash);
    }

    /// The current request for `item` failed: ask the next announcer, or give up.
    fn retry(&mut self, now: Instant, item: InvItem) {
        let Some(w) = self.wanted.get_mut(&item) else {
            return;
        };
        match w.next_announcer(self.config.max_retries, now + self.config.request_timeout) {
            Some(peer) => {
                self.metrics.retries += 1;
                self.enqueue(&peer, Class::Reply, RelayMessage::Request(vec![item]));
            }
            None => {
                self.wanted.remove(&item);
                if let InvItem::Block(hash) = item {
                    self.drop_waiters_if_idle(hash);
                }
            }
        }
    }

    /// Whether block `hash` is being rebuilt, fetched or imported (requests for it can wait).
    fn in_progress(&self, hash: &BlockHash) -> bool {
        self.partials.contains_key(hash)
            || self.is_pending(hash)
            || self.wanted.contains_key(&InvItem::Block(*hash))
    }

    fn is_pending(&self, hash: &BlockHash) -> bool {
        self.pending_rebuilds.iter().any(|p| p.hash == *hash)
            || self.pending_imports.iter().any(|p| p.hash == *hash)
    }

    /// A block body the chain validated: recently imported here, or stored.
    fn validated_block(&self, hash: &BlockHash, host: &impl RelayHost) -> Option<Block> {
        self.recent_blocks
            .get(hash)
            .cloned()
            .or_else(|| host.block(hash))
    }

    /// Parks `peer`'s request for block `hash` until its import settles; false if the block is
    /// not in progress or too many requests wait for it.
    fn wait_for(&mut self, hash: BlockHash, peer: P, waiter: Waiter) -> bool {
        if !self.in_progress(&hash) {
            return false;
        }
        if !self.waiters.contains_key(&hash) {
            self.waiters.insert(hash, Vec::new());
        }
        let Some(list) = self.waiters.get_mut(&hash) else {
            return false;
        };
        // One request per peer and block: a repeated one replaces the earlier.
        list.retain(|(p, _)| *p != peer);
        if list.len() >= MAX_WAITERS_PER_BLOCK {
            return false;
        }
        list.push((peer, waiter));
        true
    }

    /// Answers the requests waiting for block `hash`: from its validated body, or `NotFound`.
    fn answer_waiters(&mut self, hash: BlockHash, host: &impl RelayHost) {
        let Some(list) = self.waiters.remove(&hash) else {
            return;
        };
        let block = self.validated_block(&hash, host);
        for (peer, waiter) in list {
            match (&block, waiter) {
                (Some(b), Waiter::Block) => self.serve_block(peer, b.clone()),
                (Some(b), Waiter::Txns(indexes)) => self.serve_block_txns(peer, b, indexes),
                (None, _) => self.enqueue(
                    &peer,
                    Class::Reply,
                    RelayMessage::NotFound(vec![InvItem::Block(hash)]),
                ),
            }
        }
    }

    /// Answers `NotFound` to the requests waiting for block `hash` once nothing is under way
    /// that could still bring it.
    fn drop_waiters_if_idle(&mut self, hash: BlockHash) {
        if self.in_progress(&hash) {
            return;
        }
        let Some(list) = self.waiters.remove(&hash) else {
            return;
        };
        for (peer, _) in list {
            self.enqueue(
                &peer,
                Class::Reply,
                RelayMessage::NotFound(vec![InvItem::Block(hash)]),
            );
        }
    }

    fn serve_block(&mut self, peer: P, block: Block) {
        self.mark_known(&peer, InvItem::Block(block.hash()));
        self.metrics.block.sent += 1;
        self.enqueue(&peer, Class::Reply, RelayMessage::Block(block));
    }

    fn on_request(&mut self, peer: P, items: Vec<InvItem>, host: &impl RelayHost) {
        let mut txs = Vec::new();
        let mut missing = Vec::new();
        for item in items {
            match item {
                InvItem::Tx(id) => match host.transaction(&id) {
                    Some(tx) => txs.push(tx),
                    None => missing.push(item),
                },
                InvItem::Block(hash) => match self.validated_block(&hash, host) {
                    Some(b) => self.serve_block(peer, b),
                    None if self.wait_for(hash, peer, Waiter::Block) => {}
                    None => missing.push(item),
                },
                InvItem::Challenge(id) => match self.challenges.get(&id) {
                    Some((c, _)) => {
                        let c = c.clone();
                        self.enqueue(&peer, Class::Reply, RelayMessage::Challenge(c));
                    }
                    None => missing.push(item),
                },
                InvItem::Solution(_) | InvItem::Verdict(_) => missing.push(item),
            }
        }
        if !txs.is_empty() {
            for tx in &txs {
                self.mark_known(&peer, InvItem::Tx(tx.id()));
            }
            self.metrics.tx.sent += txs.len() as u64;
            for chunk in txs.chunks(self.config.batch_size.max(1)) {
                self.enqueue(
                    &peer,
                    Class::Reply,
                    RelayMessage::Transactions(chunk.to_vec()),
                );
            }
        }
        if !missing.is_empty() {
            self.enqueue(&peer, Class::Reply, RelayMessage::NotFound(missing));
        }
    }

    /// A batch of transactions from `peer`: the ones we have not seen go to the host together
    /// (one signature pass, one lock), then each is handled on its own verdict.
    fn on_transactions(
        &mut self,
        now: Instant,
        peer: P,
        txs: Vec<Transaction>,
        host: &mut impl RelayHost,
    ) {
        let mut fresh = Vec::with_capacity(txs.len());
        let mut ids = HashSet::with_capacity(txs.len());
        // Later copies of an id in the same batch: judged after the first, as one by one.
        let mut again = Vec::new();
        for tx in txs {
            let id = tx.id();
            let item = InvItem::Tx(id);
            self.mark_known(&peer, item);
            if self.seen.contains(&item) {
                self.wanted.remove(&item);
                self.metrics.tx.duplicates += 1;
            } else if ids.insert(id) {
                fresh.push((id, tx));
            } else {
                again.push((id, tx));
            }
        }
        if fresh.is_empty() {
            return;
        }
        let verdicts = host.submit_transactions(fresh.iter().map(|(_, tx)| tx.clone()).collect());
        // A host that answers short leaves the rest unjudged: dropped, nobody blamed.
        let mut accepted = Vec::new();
        for ((id, tx), verdict) in fresh.into_iter().zip(verdicts) {
            if verdict == TxVerdict::Accepted && !self.partials.is_empty() {
                accepted.push(tx.clone());
            }
            self.on_tx_verdict(now, peer, id, tx, verdict);
        }
        self.fill_partials(now, &accepted, host);
        for (id, tx) in again {
            if self.seen.contains(&InvItem::Tx(id)) {
                self.metrics.tx.duplicates += 1;
            } else {
                // The first copy was invalid (a forgery): this one stands on its own.
                let verdict = host.submit_transaction(tx.clone());
                self.on_tx_verdict(now, peer, id, tx, verdict);
            }
        }
    }

    /// Puts newly accepted transactions into the blocks being rebuilt that miss them; a block
    /// left with no gap is imported at once, ahead of the `BlockTxns` reply.
    fn fill_partials(&mut self, now: Instant, txs: &[Transaction], host: &mut impl RelayHost) {
        if txs.is_empty() || self.partials.is_empty() {
            return;
        }
        let mut done = Vec::new();
        for (hash, partial) in &mut self.partials {
            for tx in txs {
                if let Some(i) = partial.missing.remove(&ShortId::new(hash, &tx.id()))
                    && let Some(slot) = partial.txs.get_mut(i as usize)
                {
                    *slot = Some(tx.clone());
                }
            }
            if partial.missing.is_empty() {
                done.push(*hash);
            }
        }
        for hash in done {
            if let Some(partial) = self.partials.remove(&hash) {
                self.completed_early.insert(hash, partial.from);
                self.complete_block(now, hash, partial, host);
            }
        }
    }

    /// Acts on the host's verdict on a transaction `peer` sent.
    fn on_tx_verdict(
        &mut self,
        now: Instant,
        peer: P,
        id: TxId,
        tx: Transaction,
        verdict: TxVerdict,
    ) {
        // The id does not cover the signature: a forged copy of a valid transaction has its id.
        // Only a transaction that validated marks the id seen (and stops our request for it), or
        // a forgery sent first would make us drop the real one as a duplicate.
        if verdict != TxVerdict::Invalid {
            self.note_tx(id);
        }
        match verdict {
            TxVerdict::Accepted => {
                self.metrics.tx.received += 1;
                self.events.push_back(RelayEvent::UsefulDelivery(peer));
                self.events.push_back(RelayEvent::NewTransaction {
                    id,
                    from: Some(peer),
                });
                self.relay_tx(now, tx, Some(peer));
            }
            TxVerdict::Known => self.metrics.tx.duplicates += 1,
            TxVerdict::Invalid => self.penalize(peer, Offence::InvalidTransaction),
            TxVerdict::Refused => {}
        }
    }

    fn on_compact_block(
        &mut self,
        now: Instant,
        peer: P,
        cb: CompactBlock,
        host: &mut impl RelayHost,
    ) {
        let hash = cb.header.hash();
        let item = InvItem::Block(hash);
        self.mark_known(&peer, item);
        if self.seen.contains(&item) || self.partials.contains_key(&hash) || self.is_pending(&hash)
        {
            self.metrics.block.duplicates += 1;
            self.note_alternate(hash, peer);
            return;
        }
        match host.check_header(&cb.header) {
            HeaderVerdict::Invalid => {
                self.penalize(peer, Offence::InvalidHeader);
                return;
            }
            HeaderVerdict::Known => {
                self.seen.insert(item);
                self.metrics.block.duplicates += 1;
                return;
            }
            HeaderVerdict::UnknownParent => {
                self.events.push_back(RelayEvent::MissingParent {
                    hash,
                    parent: cb.header.parent,
                    peer,
                });
                return;
            }
            HeaderVerdict::Valid => {}
        }
        // BIP152 high-bandwidth relay: the header is valid (linked, right producer, signed), so
        // pass the compact block on before rebuilding and importing the body. A body that turns
        // out invalid is the producer's doing, and peers that relayed it are not blamed for it
        // (see `import`); we never serve a body the chain has not validated.
        self.seen.insert(item);
        self.relay_compact(&cb, Some(peer));
        if self.pending_rebuilds.len() >= MAX_PENDING_IMPORTS
            && let Some(oldest) = self.pending_rebuilds.pop_front()
        {
            self.rebuild(now, oldest, host);
        }
        self.pending_rebuilds.push_back(PendingRebuild {
            hash,
            cb,
            from: peer,
            alternates: Vec::new(),
        });
    }

    /// Rebuilds a relayed compact block from the mempool: complete, it waits for import;
    /// otherwise the sender is asked for the missing transactions (or, with too many partial
    /// blocks, for the full block).
    fn rebuild(&mut self, now: Instant, pending: PendingRebuild<P>, host: &mut impl RelayHost) {
        let PendingRebuild {
            hash,
            cb,
            from: peer,
            alternates,
        } = pending;
        let item = InvItem::Block(hash);
        // Hash every mempool id under this block and look it up among the block's short ids
        // (a map of the block's size, not the mempool's); the first id to match a position
        // fills it.
        let mut position: HashMap<ShortId, usize> = HashMap::with_capacity(cb.short_ids.len());
        for (i, s) in cb.short_ids.iter().enumerate() {
            position.entry(*s).or_insert(i);
        }
        let mut found: Vec<Option<TxId>> = vec![None; cb.short_ids.len()];
        if !position.is_empty() {
            for id in host.mempool_ids() {
                if let Some(slot) = position
                    .get(&ShortId::new(&hash, &id))
                    .and_then(|&i| found.get_mut(i))
                    && slot.is_none()
                {
                    *slot = Some(id);
                }
            }
        }
        let wanted: Vec<TxId> = found.iter().flatten().copied().collect();
        let mut fetched = host.transactions(&wanted).into_iter();
        let txs: Vec<Option<Transaction>> = found
            .iter()
            .map(|id| id.and_then(|_| fetched.next().flatten()))
            .collect();
        let missing: Vec<u32> = txs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i as u32)
            .collect();
        let partial = PartialBlock {
            missing: missing
                .iter()
                .filter_map(|i| cb.short_ids.get(*i as usize).map(|s| (*s, *i)))
                .collect(),
            requested: missing.clone(),
            header: cb.header,
            txs,
            from: peer,
            alternates,
            deadline: now + self.config.request_timeout,
        };
        if missing.is_empty() {
            self.metrics.compact_rebuilt += 1;
            self.complete_block(now, hash, partial, host);
        } else if self.partials.len() < MAX_PARTIAL_BLOCKS {
            self.metrics.compact_partial += 1;
            self.partials.insert(hash, partial);
            self.enqueue(
                &peer,
                Class::Reply,
                RelayMessage::BlockTxnsRequest {
                    block: hash,
                    indexes: missing,
                },
            );
        } else {
            self.metrics.compact_fallback += 1;
            self.want(now, item, peer);
        }
    }

    /// Another peer sent a compact block we are already completing: remember it as a source
    /// of the full block in case the first sender fails us.
    fn note_alternate(&mut self, hash: BlockHash, peer: P) {
        let add = |list: &mut Vec<P>, from: Option<P>| {
            if list.len() < MAX_ANNOUNCERS && from != Some(peer) && !list.contains(&peer) {
                list.push(peer);
            }
        };
        if let Some(p) = self.partials.get_mut(&hash) {
            add(&mut p.alternates, Some(p.from));
        } else if let Some(p) = self.pending_rebuilds.iter_mut().find(|p| p.hash == hash) {
            add(&mut p.alternates, Some(p.from));
        } else if let Some(p) = self.pending_imports.iter_mut().find(|p| p.hash == hash) {
            add(&mut p.alternates, p.from);
        } else if let Some(w) = self.wanted.get_mut(&InvItem::Block(hash))
            && w.announcers.len() < MAX_ANNOUNCERS
            && !w.announcers.contains(&peer)
            && !w.asked(peer)
        {
            w.announcers.push_back(peer);
        }
    }

    fn complete_block(
        &mut self,
        now: Instant,
        hash: BlockHash,
        partial: PartialBlock<P>,
        host: &mut impl RelayHost,
    ) {
        let Some(txs) = partial.txs.into_iter().collect::<Option<Vec<_>>>() else {
            return;
        };
        let block = Block {
            header: partial.header,
            txs,
        };
        self.events.push_back(RelayEvent::BlockReceived {
            hash,
            from: partial.from,
        });
        self.queue_import(
            now,
            PendingImport {
                hash,
                block,
                from: Some(partial.from),
                alternates: partial.alternates,
                source: Source::Compact,
            },
            host,
        );
    }

    /// Leaves a block's import for `run_pending_imports`; if too many wait, imports the oldest
    /// now.
    fn queue_import(&mut self, now: Instant, pending: PendingImport<P>, host: &mut impl RelayHost) {
        if self.pending_imports.len() >= MAX_PENDING_IMPORTS
            && let Some(oldest) = self.pending_imports.pop_front()
        {
            self.import(now, oldest, host);
        }
        self.pending_imports.push_back(pending);
    }

    fn import_pending(&mut self, now: Instant, host: &mut impl RelayHost) {
        self.run_pending_rebuilds(now, host);
        while let Some(pending) = self.pending_imports.pop_front() {
            self.import(now, pending, host);
        }
    }

    /// Imports one block and acts on the verdict: events, relay of a full block, serving its
    /// body, blame.
    fn import(&mut self, now: Instant, pending: PendingImport<P>, host: &mut impl RelayHost) {
        let PendingImport {
            hash,
            block,
            from,
            alternates,
            source,
        } = pending;
        let item = InvItem::Block(hash);
        let parent = block.header.parent;
        let verdict = host.submit_block(block.clone());
        match verdict {
            BlockVerdict::Imported => {
                if let Some(peer) = from {
                    self.metrics.block.received += 1;
                    self.events.push_back(RelayEvent::UsefulDelivery(peer));
                }
                self.events.push_back(RelayEvent::NewBlock { hash, from });
                if source == Source::Full {
                    self.seen.insert(item);
                    self.relay_block(&block, from);
                }
                // Only a body the chain validated is ever served.
                self.recent_blocks.insert(hash, block);
            }
            BlockVerdict::Known => {
                if from.is_some() {
                    self.metrics.block.duplicates += 1;
                }
            }
            BlockVerdict::Orphan => {
                if let Some(peer) = from {
                    self.events
                        .push_back(RelayEvent::MissingParent { hash, parent, peer });
                }
            }
            BlockVerdict::Invalid => match (source, from) {
                // A short-id collision, or wrong short ids or transactions from the sender,
                // rebuild a wrong body under a valid header; the producer may also have signed
                // an invalid body. The sender relayed the compact block on its header, before
                // its own import, as we did: fetch the full block (which it serves only if its
                // chain validated it) before blaming anyone.
                (Source::Compact, Some(peer)) => {
                    self.metrics.compact_fallback += 1;
                    self.want_from(now, hash, peer, alternates);
                }
                // A full block is served only after the server's chain validated it: one that
                // fails here is the server's fault (Medium: it may run other rules).
                (Source::Full, Some(peer)) => self.penalize(peer, Offence::InvalidBlockBody),
                // Our own block: the caller learns it from the outcome.
                _ => {}
            },
            BlockVerdict::Refused => {}
        }
        self.answer_waiters_if_settled(hash, host);
        if self.settled.len() >= MAX_PENDING_IMPORTS {
            self.settled.pop_front();
        }
        self.settled.push_back(BlockImport {
            hash,
            from,
            verdict,
        });
    }

    /// Answers the requests waiting for `hash` unless a fallback fetch of it is under way.
    fn answer_waiters_if_settled(&mut self, hash: BlockHash, host: &impl RelayHost) {
        if !self.in_progress(&hash) {
            self.answer_waiters(hash, host);
        }
    }

    fn on_block_txns_request(
        &mut self,
        peer: P,
        hash: BlockHash,
        indexes: Vec<u32>,
        host: &impl RelayHost,
    ) {
        match self.validated_block(&hash, host) {
            Some(block) => self.serve_block_txns(peer, &block, indexes),
            None => {
                if !self.wait_for(hash, peer, Waiter::Txns(indexes)) {
                    self.enqueue(
                        &peer,
                        Class::Reply,
                        RelayMessage::NotFound(vec![InvItem::Block(hash)]),
                    );
                }
            }
        }
    }

    fn serve_block_txns(&mut self, peer: P, block: &Block, indexes: Vec<u32>) {
        let mut txs = Vec::with_capacity(indexes.len());
        for i in indexes {
            match block.txs.get(i as usize) {
                Some(tx) => txs.push(tx.clone()),
                None => {
                    self.penalize(peer, Offence::MalformedReply);
                    return;
                }
            }
        }
        self.metrics.tx.sent += txs.len() as u64;
        self.enqueue(
            &peer,
            Class::Reply,
            RelayMessage::BlockTxns {
                block: block.hash(),
                txs,
            },
        );
    }

    fn on_block_txns(
        &mut self,
        now: Instant,
        peer: P,
        hash: BlockHash,
        txs: Vec<Transaction>,
        host: &mut impl RelayHost,
    ) {
        let Some(mut partial) = self.partials.remove(&hash) else {
            if self.completed_early.get(&hash) == Some(&peer) {
                // We asked; relayed transactions completed the block first.
                self.completed_early.remove(&hash);
            } else {
                self.blame_slow(now, peer, Offence::Unrequested);
            }
            return;
        };
        if partial.from != peer {
            self.partials.insert(hash, partial);
            self.blame_slow(now, peer, Offence::Unrequested);
            return;
        }
        let complete = txs.len() == partial.requested.len();
        for (i, tx) in partial.requested.iter().zip(txs) {
            if let Some(slot) = partial.txs.get_mut(*i as usize) {
                *slot = Some(tx);
            }
        }
        if !complete || partial.txs.iter().any(Option::is_none) {
            self.penalize(peer, Offence::MalformedReply);
            self.metrics.compact_fallback += 1;
            self.want_from(now, hash, peer, partial.alternates);
            return;
        }
        self.complete_block(now, hash, partial, host);
    }

    fn on_block(&mut self, now: Instant, peer: P, block: Block, host: &mut impl RelayHost) {
        let hash = block.hash();
        let item = InvItem::Block(hash);
        self.mark_known(&peer, item);
        let requested = self.wanted.remove(&item).is_some();
        let alternates = self
            .partials
            .remove(&hash)
            .map(|p| p.alternates)
            .unwrap_or_default();
        if host.has_block(&hash) || self.is_pending(&hash) {
            self.metrics.block.duplicates += 1;
            self.answer_waiters_if_settled(hash, host);
            return;
        }
        if !requested {
            // Full blocks are only sent on request; an unsolicited one still gets checked.
            self.blame_slow(now, peer, Offence::Unrequested);
        }
        match host.check_header(&block.header) {
            HeaderVerdict::Invalid => {
                self.penalize(peer, Offence::InvalidHeader);
                self.drop_waiters_if_idle(hash);
            }
            HeaderVerdict::Known => {
                self.metrics.block.duplicates += 1;
                self.answer_waiters_if_settled(hash, host);
            }
            verdict @ (HeaderVerdict::UnknownParent | HeaderVerdict::Valid) => {
                if verdict == HeaderVerdict::Valid {
                    self.events
                        .push_back(RelayEvent::BlockReceived { hash, from: peer });
                }
                self.queue_import(
                    now,
                    PendingImport {
                        hash,
                        block,
                        from: Some(peer),
                        alternates,
                        source: Source::Full,
                    },
                    host,
                );
            }
        }
    }

    /// Marks `item` known to `peer` and says whether it is new and correctly signed: duplicates
    /// are dropped, bad signatures penalised.
    fn accept_signed(&mut self, peer: P, item: InvItem, signed_ok: impl FnOnce() -> bool) -> bool {
        self.mark_known(&peer, item);
        if self.seen.contains(&item) {
            return false;
        }
        if !signed_ok() {
            self.penalize(peer, Offence::InvalidAiMessage);
            return false;
        }
        self.seen.insert(item);
        true
    }

    fn on_challenge(&mut self, peer: P, challenge: Challenge) {
        let id = challenge.id();
        if !self.accept_signed(peer, InvItem::Challenge(id), || challenge.verify().is_ok()) {
            return;
        }
        self.challenges.insert(id, (challenge.clone(), Some(peer)));
        self.events.push_back(RelayEvent::ChallengeReceived {
            challenge: Box::new(challenge.clone()),
            from: peer,
        });
        if challenge.hops_left > 1 {
            let mut next = challenge;
            next.hops_left -= 1;
            self.forward_challenge(next, Some(peer));
        }
    }

    fn forward_challenge(&mut self, challenge: Challenge, from: Option<P>) {
        let item = InvItem::Challenge(challenge.id());
        if challenge.hops_left == 0 {
            return;
        }
        let eligible = self.eligible(item, from);
        let targets: Vec<P> = match self.config.challenge_strategy {
            Strategy::Directed => {
                let ai: Vec<P> = eligible
                    .iter()
                    .copied()
                    .filter(|p| self.peers[p].caps.contains(Capabilities::AI_COMPUTE))
                    .collect();
                // No AI peer here: pass it on through ordinary peers, within the hop budget.
                if ai.is_empty() { eligible } else { ai }
            }
            Strategy::Flood | Strategy::Gossip => eligible,
        };
        for peer in targets {
            self.mark_known(&peer, item);
            self.enqueue(&peer, Class::Ai, RelayMessage::Challenge(challenge.clone()));
        }
    }

    fn on_solution(&mut self, peer: P, solution: Solution, challenge: Option<Challenge>) {
        let sid = solution.id();
        let item = InvItem::Solution(sid);
        self.mark_known(&peer, item);
        if solution.verify().is_err()
            || challenge
                .as_ref()
                .is_some_and(|c| c.verify().is_err() || c.id() != solution.body.challenge)
        {
            self.penalize(peer, Offence::InvalidAiMessage);
            return;
        }
        if let Some(challenge) = challenge {
            // Asked to validate (once per solution).
            if self.seen.insert(InvItem::Verdict(sid.0)) {
                self.tally_for(sid, &solution);
                self.events.push_back(RelayEvent::SolutionToVerify {
                    challenge: Box::new(challenge),
                    solution: Box::new(solution),
                });
            }
            return;
        }
        if !self.seen.insert(item) {
            return;
        }
        self.tally_for(sid, &solution);
        // Travelling toward the issuer: pass it one hop back along the challenge's path.
        if let Some((_, Some(origin))) = self.challenges.get(&solution.body.challenge).cloned() {
            self.enqueue(
                &origin,
                Class::Ai,
                RelayMessage::Solution {
                    solution,
                    challenge: None,
                },
            );
        }
    }

    fn on_verdict(&mut self, peer: P, verdict: Verdict) {
        let item = InvItem::Verdict(verdict.id());
        if !self.accept_signed(peer, item, || verdict.verify().is_ok()) {
            return;
        }
        self.count_verdict(&verdict);
        self.flood(item, RelayMessage::Verdict(verdict), Some(peer));
    }

    fn tally_for(&mut self, sid: SolutionId, solution: &Solution) {
        if !self.tallies.contains_key(&sid) {
            self.tallies.insert(sid, Tally::default());
        }
        if let Some(t) = self.tallies.get_mut(&sid) {
            t.solver = Some(solution.body.solver);
            t.challenge = Some(solution.body.challenge);
        }
    }

    fn count_verdict(&mut self, v: &Verdict) {
        let sid = v.body.solution;
        if !self.tallies.contains_key(&sid) {
            self.tallies.insert(sid, Tally::default());
        }
        let quorum = self.config.verdict_quorum.max(1);
        let Some(t) = self.tallies.get_mut(&sid) else {
            return;
        };
        // A solver cannot judge itself; one verdict per validator.
        if v.body.validator == v.body.solver
            || t.verdicts.iter().any(|(k, _)| *k == v.body.validator)
        {
            return;
        }
        t.solver.get_or_insert(v.body.solver);
        t.challenge.get_or_insert(v.body.challenge);
        t.verdicts.push((v.body.validator, v.body.valid));
        let agree = t
            .verdicts
            .iter()
            .filter(|(_, ok)| *ok == v.body.valid)
            .count();
        if !t.settled && agree >= quorum {
            t.settled = true;
            self.events
                .push_back(RelayEvent::SolutionSettled(Box::new(Settlement {
                    challenge: v.body.challenge,
                    solution: sid,
                    solver: v.body.solver,
                    valid: v.body.valid,
                    verdicts: t.verdicts.clone(),
                })));
        }
    }

    // ---- spreading -------------------------------------------------------------------------

    /// Peers other than `from` not known to have `item`, in a stable order.
    fn eligible(&self, item: InvItem, from: Option<P>) -> Vec<P> {
        let mut out: Vec<P> = self
            .peers
            .iter()
            .filter(|(k, p)| Some(**k) != from && !p.slow && !p.known.contains(&item))
            .map(|(k, _)| *k)
            .collect();
        out.sort();
        out
    }

    fn flood(&mut self, item: InvItem, msg: RelayMessage, from: Option<P>) {
        let class = msg.class();
        for peer in self.eligible(item, from) {
            self.mark_known(&peer, item);
            self.enqueue(&peer, class, msg.clone());
        }
    }

    fn relay_tx(&mut self, now: Instant, tx: Transaction, from: Option<P>) {
        let id = tx.id();
        let item = InvItem::Tx(id);
        let mut targets = self.eligible(item, from);
        targets.retain(|k| self.in_relay_set(k));
        let push = match self.config.tx_strategy {
            Strategy::Gossip if from.is_some() && !self.config.push_relayed_txs => 0,
            Strategy::Gossip => {
                targets.shuffle(&mut self.rng);
                self.config.gossip_factor.of(targets.len())
            }
            Strategy::Flood | Strategy::Directed => targets.len(),
        };
        let push_due = now + self.config.batch_delay;
        // The origin's announcements are the first hop: they go with its pushes.
        let announce_due = match from {
            Some(_) => now + self.config.announce_interval,
            None => push_due,
        };
        let batch = self.config.batch_size.max(1);
        let yield_until = now + self.config.announce_yield;
        let may_yield = from.is_some() && !self.config.announce_yield.is_zero();
        for (i, peer) in targets.into_iter().enumerate() {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            // One side of each link yields, so that the two announcements of a link do not
            // cross. The origin has no one to yield to: all its peers lack the transaction.
            if i >= push
                && may_yield
                && p.order.as_ref().is_some_and(|o| o.we_yield(&id))
                && p.deferred.len() < MAX_DEFERRED_PER_PEER
            {
                p.deferred.push_back((yield_until, id));
                continue;
            }
            if i < push {
                p.known.insert(item);
                p.pending_txs.push(tx.clone());
            } else if !p.announce_short(id) {
                p.known.insert(item);
                p.pending_announce.push(item);
            }
            let due = if i < push { push_due } else { announce_due };
            p.batch_deadline = Some(p.batch_deadline.map_or(due, |d| d.min(due)));
            if p.pending_txs.len() >= batch
                || p.pending_announce.len() >= batch
                || p.pending_short.len() >= batch
            {
                self.flush(&peer);
            }
        }
    }

    /// Sends the yielded announcements that are due, except to peers that told us of the
    /// transaction meanwhile (that is the crossing the yield avoids).
    fn release_deferred(&mut self, now: Instant) {
        let mut flush = Vec::new();
        // When the oldest is due, the ones that waited at least half the yield go with it, in
        // one batch (the younger ones would still cross too often).
        let batch_until = now + self.config.announce_yield / 2;
        for (key, p) in &mut self.peers {
            let mut any = false;
            if p.deferred.front().is_none_or(|(due, _)| *due > now) {
                continue;
            }
            while let Some((_, id)) = p.deferred.pop_front_if(|(due, _)| *due <= batch_until) {
                let item = InvItem::Tx(id);
                if p.known.contains(&item) || !self.seen.contains(&item) {
                    self.metrics.announcements_yielded += 1;
                    continue;
                }
                // Only peers with a salt have an announce order, so only they have yields.
                any |= p.announce_short(id);
            }
            if any {
                flush.push(*key);
            }
        }
        flush.sort();
        for peer in flush {
            self.flush(&peer);
        }
    }

    fn relay_block(&mut self, block: &Block, from: Option<P>) {
        self.relay_compact(&CompactBlock::of(block), from);
    }

    /// Pushes a compact block to every peer but `from` not known to have it: all of them for
    /// our own block (one hop to every peer), the relay set for a block from a peer. Every
    /// node pushes to its own random relay set, so a relayed block still reaches every node in
    /// a few hops, and a node's cost per block does not grow with its connection count.
    fn relay_compact(&mut self, cb: &CompactBlock, from: Option<P>) {
        let item = InvItem::Block(cb.header.hash());
        let compact = RelayMessage::CompactBlock(cb.clone());
        let mut targets = self.eligible(item, from);
        if from.is_some() {
            targets.retain(|k| self.in_relay_set(k));
        }
        for peer in targets {
            self.mark_known(&peer, item);
            self.metrics.block.sent += 1;
            self.enqueue(&peer, Class::Block, compact.clone());
        }
    }

    fn flush(&mut self, peer: &P) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.batch_deadline = None;
        let txs = std::mem::take(&mut p.pending_txs);
        let announce = std::mem::take(&mut p.pending_announce);
        let short = std::mem::take(&mut p.pending_short);
        let batch = self.config.batch_size.max(1);
        self.metrics.tx.sent += txs.len() as u64;
        for chunk in txs.chunks(batch) {
            self.enqueue(peer, Class::Tx, RelayMessage::Transactions(chunk.to_vec()));
        }
        for chunk in announce.chunks(batch) {
            self.enqueue(
                peer,
                Class::Announce,
                RelayMessage::Announce(chunk.to_vec()),
            );
        }
        for chunk in short.chunks(batch) {
            self.enqueue(
                peer,
                Class::Announce,
                RelayMessage::announce_txs(chunk.to_vec()),
            );
        }
    }

    /// Queues `msg` toward `peer`; a peer whose queue would exceed its byte bound is slow.
    fn enqueue(&mut self, peer: &P, class: Class, msg: RelayMessage) {
        let limit = self.config.max_peer_queue_bytes;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.slow {
            return;
        }
        let bytes = msg.encoded_len();
        if p.queue.bytes + bytes > limit {
            p.slow = true;
            p.queue = PeerQueue::default();
            p.pending_txs.clear();
            p.pending_announce.clear();
            p.pending_short.clear();
            p.deferred.clear();
            p.batch_deadline = None;
            self.metrics.slow_peers += 1;
            self.events.push_back(RelayEvent::SlowPeer(*peer));
            return;
        }
        p.queue.bytes += bytes;
        p.queue.classes[class as usize].push_back(msg);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use playergold_primitives::{
        Address, Amount, Height, Keypair, Nonce, TimestampMs, UnsignedTransaction,
    };

    use super::*;

    /// A mempool that checks signatures, and a block store that checks headers and bodies.
    #[derive(Default)]
    struct Mempool(HashMap<TxId, Transaction>, HashMap<BlockHash, Block>, bool);

    impl RelayHost for Mempool {
        fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict {
            if tx.verify().is_err() {
                return TxVerdict::Invalid;
            }
            match self.0.insert(tx.id(), tx) {
                Some(_) => TxVerdict::Known,
                None => TxVerdict::Accepted,
            }
        }
        fn transaction(&self, id: &TxId) -> Option<Transaction> {
            self.0.get(id).cloned()
        }
        fn has_transaction(&self, id: &TxId) -> bool {
            self.0.contains_key(id)
        }
        fn mempool_ids(&self) -> Vec<TxId> {
            self.0.keys().copied().collect()
        }
        fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict {
            if self.1.contains_key(&header.hash()) {
                HeaderVerdict::Known
            } else if header.verify_signature().is_err() {
                HeaderVerdict::Invalid
            } else if !self.1.contains_key(&header.parent) {
                HeaderVerdict::UnknownParent
            } else {
                HeaderVerdict::Valid
            }
        }
        fn submit_block(&mut self, block: Block) -> BlockVerdict {
            match self.check_header(&block.header) {
                HeaderVerdict::Valid => {}
                HeaderVerdict::Known => return BlockVerdict::Known,
                HeaderVerdict::UnknownParent => return BlockVerdict::Orphan,
                HeaderVerdict::Invalid => return BlockVerdict::Invalid,
            }
            // The third field: refuse for a local reason, before looking at the body.
            if self.2 {
                return BlockVerdict::Refused;
            }
            let ids = block.tx_ids();
            if playergold_primitives::merkle_root(&ids) != block.header.tx_root
                || block.verify_signatures(&ids).is_err()
            {
                return BlockVerdict::Invalid;
            }
            self.1.insert(block.hash(), block);
            BlockVerdict::Imported
        }
        fn block(&self, hash: &BlockHash) -> Option<Block> {
            self.1.get(hash).cloned()
        }
        fn has_block(&self, hash: &BlockHash) -> bool {
            self.1.contains_key(hash)
        }
    }

    fn tx(key: &Keypair, nonce: u64) -> Transaction {
        UnsignedTransaction {
            from: key.public(),
            to: Address([1; 20]),
            amount: Amount(10),
            fee: Amount(1),
            nonce: Nonce(nonce),
            timestamp_ms: TimestampMs(0),
        }
        .sign(key)
    }

    /// A relayed transaction is only announced, by 4-byte ids under each receiver's salt; the
    /// receiver asks by short id, gets it once, and does not announce it back to anyone who
    /// announced it. A timed-out short-id request goes to the next announcer.
    #[test]
    fn relayed_transactions_travel_as_salted_short_id_announcements_and_one_pull() {
        let key = Keypair::from_secret(&[7; 32]);
        let tx = tx(&key, 0);
        let id = tx.id();
        let now = Instant::now();
        // Node A got `tx` from peer 9 (so it relays it: announce only) and has peers B (1), C (2).
        let mut a: RelayEngine<u8> = RelayEngine::new(PropagationConfig::default(), 1);
        let mut b: RelayEngine<u8> = RelayEngine::new(PropagationConfig::default(), 2);
        let c: RelayEngine<u8> = RelayEngine::new(PropagationConfig::default(), 3);
        assert_ne!(b.tx_salt(), c.tx_salt(), "every node has its own salt");
        let mut host_a = Mempool::default();
        let mut host_b = Mempool::default();
        for (peer, salt) in [(1, b.tx_salt()), (2, c.tx_salt()), (9, c.tx_salt())] {
            a.add_peer(peer, Capabilities::NONE);
            a.set_peer_tx_salt(&peer, salt);
        }
        // B knows A (peer 0) and C (peer 2), both with their salts.
        for (peer, salt) in [(0, a.tx_salt()), (2, c.tx_salt())] {
            b.add_peer(peer, Capabilities::NONE);
            b.set_peer_tx_salt(&peer, salt);
        }
        a.handle_message(
            now,
            9,
            RelayMessage::Transactions(vec![tx.clone()]),
            &mut host_a,
        );
        a.handle_timeout(now + Duration::from_secs(1));
        let short_b = TxShortIds::new(b.tx_salt()).of(&id);
        let short_c = TxShortIds::new(c.tx_salt()).of(&id);
        assert_ne!(
            short_b, short_c,
            "the same tx has another short id per receiver"
        );
        assert_eq!(
            sent(&mut a, 1),
            vec![RelayMessage::AnnounceTx(short_b)],
            "a relayed tx is announced, not pushed"
        );
        assert_eq!(sent(&mut a, 2), vec![RelayMessage::AnnounceTx(short_c)]);
        assert!(sent(&mut a, 9).is_empty(), "never back to its sender");

        // C announced it to B before A did: B asks C, then A's announcement only joins the wait.
        b.handle_message(now, 2, RelayMessage::AnnounceTx(short_b), &mut host_b);
        assert_eq!(sent(&mut b, 2), vec![RelayMessage::RequestTx(short_b)]);
        b.handle_message(now, 0, RelayMessage::AnnounceTx(short_b), &mut host_b);
        assert!(sent(&mut b, 0).is_empty(), "one request at a time");
        // C never answers: after the timeout B asks A, which serves it from its announcement.
        let later = now + PropagationConfig::default().request_timeout;
        b.handle_timeout(later);
        assert_eq!(sent(&mut b, 0), vec![RelayMessage::RequestTx(short_b)]);
        a.handle_message(
            later,
            1,
            RelayMessage::RequestTxs(vec![short_b, junk_short()]),
            &mut host_a,
        );
        let reply = sent(&mut a, 1);
        assert_eq!(
            reply,
            vec![
                RelayMessage::Transactions(vec![tx.clone()]),
                RelayMessage::TxsNotFound(vec![junk_short()]),
            ]
        );
        b.handle_message(later, 0, reply[0].clone(), &mut host_b);
        assert_eq!(host_b.0.get(&id), Some(&tx));
        b.handle_timeout(later + Duration::from_secs(1));
        assert!(
            sent(&mut b, 0).is_empty() && sent(&mut b, 2).is_empty(),
            "both peers announced it to B: B announces it to nobody"
        );
        assert!(
            b.poll_timeout().is_none(),
            "nothing left waiting: {:?}",
            b.poll_timeout()
        );
        // A later announcement of a known short id is not requested.
        b.handle_message(later, 2, RelayMessage::AnnounceTx(short_b), &mut host_b);
        assert!(sent(&mut b, 2).is_empty());
    }

    /// Two peers that get a transaction at the same time do not announce it to each other both:
    /// the side whose own short id of it is the lower holds its announcement back
    /// (`announce_yield`) and drops it once the other side's arrives; when nothing arrives, it
    /// announces after the yield.
    #[test]
    fn one_side_of_each_link_yields_its_announcement() {
        let key = Keypair::from_secret(&[8; 32]);
        let config = PropagationConfig::default();
        let now = Instant::now();
        // Relayed transactions' announcements go out with the trickle.
        let batch_due = now + config.announce_interval;
        let yield_due = now + config.announce_yield;
        // Engines A and B are linked (A calls B 1, B calls A 0); both hear of the txs from 9.
        let link = || {
            let mut a: RelayEngine<u8> = RelayEngine::new(config.clone(), 1);
            let mut b: RelayEngine<u8> = RelayEngine::new(config.clone(), 2);
            let (salt_a, salt_b) = (a.tx_salt(), b.tx_salt());
            for (e, peer, salt) in [(&mut a, 1, salt_b), (&mut b, 0, salt_a)] {
                for p in [peer, 9] {
                    e.add_peer(p, Capabilities::NONE);
                }
                e.set_peer_tx_salt(&peer, salt);
                e.set_peer_tx_salt(&9, TxSalt([9; 16]));
            }
            (a, b)
        };
        let (mut a, mut b) = link();
        let (mut host_a, mut host_b) = (Mempool::default(), Mempool::default());
        let first = tx(&key, 0);
        let id = first.id();
        let short_for_a = TxShortIds::new(a.tx_salt()).of(&id);
        let short_for_b = TxShortIds::new(b.tx_salt()).of(&id);
        assert_ne!(short_for_a, short_for_b);
        for (e, host) in [(&mut a, &mut host_a), (&mut b, &mut host_b)] {
            e.handle_message(
                now,
                9,
                RelayMessage::Transactions(vec![first.clone()]),
                host,
            );
            e.handle_timeout(batch_due);
        }
        let from_a = sent(&mut a, 1);
        let from_b = sent(&mut b, 0);
        let a_yields = AnnounceOrder::new(a.tx_salt(), b.tx_salt()).we_yield(&id);
        let (fast_msgs, slow, slow_host, slow_from_fast, fast_peer_of_slow) = if a_yields {
            assert!(from_a.is_empty(), "A yields: {from_a:?}");
            (from_b, &mut a, &mut host_a, 1u8, 1u8)
        } else {
            assert!(from_b.is_empty(), "B yields: {from_b:?}");
            (from_a, &mut b, &mut host_b, 0u8, 0u8)
        };
        assert_eq!(fast_msgs.len(), 1, "the other side announces at once");
        // The fast side's announcement reaches the slow side before its yield ends.
        slow.handle_message(batch_due, slow_from_fast, fast_msgs[0].clone(), slow_host);
        slow.handle_timeout(yield_due);
        assert!(
            sent(slow, fast_peer_of_slow).is_empty(),
            "the announcements of a link do not cross"
        );
        assert_eq!(slow.metrics().announcements_yielded, 1);

        // A transaction the peer never announces: the yielding side announces it after the yield.
        let (mut a, b) = link();
        let mut host_a = Mempool::default();
        let order_a = AnnounceOrder::new(a.tx_salt(), b.tx_salt());
        let second = (1..256)
            .map(|n| tx(&key, n))
            .find(|t| order_a.we_yield(&t.id()))
            .expect("A yields on about half of all transactions");
        a.handle_message(
            now,
            9,
            RelayMessage::Transactions(vec![second.clone()]),
            &mut host_a,
        );
        a.handle_timeout(batch_due);
        assert!(sent(&mut a, 1).is_empty());
        assert_eq!(a.poll_timeout(), Some(yield_due), "the yield is a timer");
        a.handle_timeout(yield_due);
        assert_eq!(
            sent(&mut a, 1),
            vec![RelayMessage::AnnounceTx(
                TxShortIds::new(b.tx_salt()).of(&second.id())
            )]
        );
        assert_eq!(a.metrics().announcements_yielded, 0);
    }

    /// A short id nobody announced.
    fn junk_short() -> TxShortId {
        TxShortId([0xEE; super::super::messages::TX_SHORT_ID_LEN])
    }

    /// Found by the `relay_engine` fuzz target: a compact block with a valid header and wrong
    /// short ids (here none) rebuilds a wrong body; when the chain refused it for a local reason
    /// before checking the body, that body stayed in `recent_blocks` and was served to peers.
    #[test]
    fn a_rebuilt_body_the_chain_did_not_validate_is_never_served() {
        let key = Keypair::from_secret(&[6; 32]);
        let parent = Block::build(&key, BlockHash([0; 32]), Height(0), TimestampMs(0), vec![]);
        let block = Block::build(
            &key,
            parent.hash(),
            Height(1),
            TimestampMs(1_000),
            vec![tx(&key, 1), tx(&key, 2)],
        );
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        host.2 = true;
        let mut engine: RelayEngine<u8> = RelayEngine::new(PropagationConfig::default(), 1);
        engine.add_peer(1, Capabilities::NONE);
        engine.add_peer(2, Capabilities::NONE);
        let now = Instant::now();
        let mut wrong = CompactBlock::of(&block);
        wrong.short_ids.clear();
        engine.handle_message(now, 1, RelayMessage::CompactBlock(wrong), &mut host);
        let hash = block.hash();
        engine.handle_message(
            now,
            2,
            RelayMessage::Request(vec![InvItem::Block(hash)]),
            &mut host,
        );
        engine.handle_message(
            now,
            2,
            RelayMessage::BlockTxnsRequest {
                block: hash,
                indexes: vec![0],
            },
            &mut host,
        );
        let to_2: Vec<RelayMessage> = std::iter::from_fn(|| engine.poll_transmit(&2)).collect();
        assert!(
            !to_2
                .iter()
                .any(|m| matches!(m, RelayMessage::Block(_) | RelayMessage::BlockTxns { .. })),
            "{to_2:?}"
        );
        assert!(to_2.contains(&RelayMessage::NotFound(vec![InvItem::Block(hash)])));
    }

    /// Found by the `relay_engine` fuzz target: a copy of a valid transaction with a broken
    /// signature has the same id, and used to mark that id seen, so the real transaction sent
    /// next was dropped as a duplicate (and our request for it cancelled).
    #[test]
    fn a_forged_copy_sent_first_does_not_shadow_the_real_transaction() {
        let key = Keypair::from_secret(&[5; 32]);
        let tx = tx(&key, 0);
        let mut forged = tx.clone();
        forged.signature.0[0] ^= 1;
        assert_eq!(forged.id(), tx.id());
        let mut host = Mempool::default();
        let mut engine: RelayEngine<u8> = RelayEngine::new(PropagationConfig::default(), 1);
        engine.add_peer(1, Capabilities::NONE);
        engine.add_peer(2, Capabilities::NONE);
        let now = Instant::now();
        // Peer 2 announces it and we ask peer 2; attacker 1 answers first with the forgery.
        engine.handle_message(
            now,
            2,
            RelayMessage::Announce(vec![InvItem::Tx(tx.id())]),
            &mut host,
        );
        engine.handle_message(now, 1, RelayMessage::Transactions(vec![forged]), &mut host);
        assert!(
            engine.poll_timeout().is_some(),
            "our request to peer 2 still stands"
        );
        engine.handle_message(
            now,
            2,
            RelayMessage::Transactions(vec![tx.clone()]),
            &mut host,
        );
        assert_eq!(host.0.get(&tx.id()), Some(&tx));
        let events: Vec<_> = std::iter::from_fn(|| engine.poll_event()).collect();
        assert!(events.contains(&RelayEvent::Penalty {
            peer: 1,
            offence: Offence::InvalidTransaction
        }));
        assert!(events.contains(&RelayEvent::NewTransaction {
            id: tx.id(),
            from: Some(2)
        }));
        // Peer 1 is known to have the id, peer 2 sent it: nothing to relay, nothing pending.
        assert_eq!(engine.poll_timeout(), None);
    }

    fn sent(engine: &mut RelayEngine<u8>, peer: u8) -> Vec<RelayMessage> {
        std::iter::from_fn(|| engine.poll_transmit(&peer)).collect()
    }

    fn events(engine: &mut RelayEngine<u8>) -> Vec<RelayEvent<u8>> {
        std::iter::from_fn(|| engine.poll_event()).collect()
    }

    /// A stored parent, and a child block of `txs` on it, signed by its producer.
    /// A missing transaction relayed to us while its block waits for `BlockTxns` completes the
    /// block at once; the late reply is expected, not unrequested.
    #[test]
    fn a_relayed_transaction_completes_a_waiting_block_before_its_block_txns() {
        let key = Keypair::from_secret(&[8; 32]);
        let (have, lack) = (tx(&key, 1), tx(&key, 2));
        let (parent, block) = parent_and_child(&key, vec![have.clone(), lack.clone()]);
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        host.0.insert(have.id(), have);
        let mut engine = engine_with_peers(&[1, 2]);
        let now = Instant::now();
        engine.handle_message(
            now,
            1,
            RelayMessage::CompactBlock(CompactBlock::of(&block)),
            &mut host,
        );
        assert!(
            sent(&mut engine, 1).contains(&RelayMessage::BlockTxnsRequest {
                block: block.hash(),
                indexes: vec![1]
            })
        );
        assert!(!host.has_block(&block.hash()));
        engine.handle_message(
            now,
            2,
            RelayMessage::Transactions(vec![lack.clone()]),
            &mut host,
        );
        assert!(host.has_block(&block.hash()), "completed by the relayed tx");
        events(&mut engine);
        engine.handle_message(
            now,
            1,
            RelayMessage::BlockTxns {
                block: block.hash(),
                txs: vec![lack],
            },
            &mut host,
        );
        let penalties: Vec<_> = events(&mut engine)
            .into_iter()
            .filter(|e| matches!(e, RelayEvent::Penalty { .. }))
            .collect();
        assert!(penalties.is_empty(), "{penalties:?}");
    }

    /// Requests beyond a peer's rate are dropped unanswered and cost it `RequestFlood`; its
    /// bucket refills with time, and other peers are not affected.
    #[test]
    fn requests_beyond_the_per_peer_rate_are_dropped_and_penalised() {
        let key = Keypair::from_secret(&[4; 32]);
        let txs: Vec<Transaction> = (0..30).map(|n| tx(&key, n)).collect();
        let mut host = Mempool::default();
        for t in &txs {
            host.0.insert(t.id(), t.clone());
        }
        let config = PropagationConfig {
            request_rate: 10.0,
            request_burst: 20.0,
            ..PropagationConfig::default()
        };
        let mut engine: RelayEngine<u8> = RelayEngine::new(config, 1);
        engine.add_peer(1, Capabilities::NONE);
        engine.add_peer(2, Capabilities::NONE);
        let ask = |range: std::ops::Range<usize>| {
            RelayMessage::Request(txs[range].iter().map(|t| InvItem::Tx(t.id())).collect())
        };
        let now = Instant::now();
        engine.handle_message(now, 1, ask(0..20), &mut host);
        assert_eq!(sent(&mut engine, 1).len(), 1, "the burst is served");
        events(&mut engine);
        engine.handle_message(now, 1, ask(20..21), &mut host);
        assert!(sent(&mut engine, 1).is_empty(), "one more is dropped");
        assert_eq!(
            events(&mut engine),
            vec![RelayEvent::Penalty {
                peer: 1,
                offence: Offence::RequestFlood
            }]
        );
        engine.handle_message(now, 2, ask(0..20), &mut host);
        assert_eq!(
            sent(&mut engine, 2).len(),
            1,
            "another peer has its own bucket"
        );
        engine.handle_message(now + Duration::from_secs(1), 1, ask(20..30), &mut host);
        assert_eq!(
            sent(&mut engine, 1),
            vec![RelayMessage::Transactions(txs[20..30].to_vec())],
            "ten tokens back after a second"
        );
        assert_eq!(engine.metrics().requests_refused, 1);
    }

    /// A node with 40 peers pushes each transaction and each block relayed from a peer to 8 of
    /// them (its relay set); a departed member is replaced; its own blocks go to every peer.
    #[test]
    fn transactions_and_relayed_blocks_go_to_a_bounded_relay_set() {
        let key = Keypair::from_secret(&[6; 32]);
        let peers: Vec<u8> = (1..=40).collect();
        let mut engine = engine_with_peers(&peers);
        let mut host = Mempool::default();
        let max = engine.config().max_relay_peers;
        let members = |e: &RelayEngine<u8>| peers.iter().filter(|p| e.in_relay_set(p)).count();
        assert_eq!(members(&engine), max);
        let now = Instant::now();
        let later = now + engine.config().batch_delay;
        engine
            .submit_transaction(now, tx(&key, 0), &mut host)
            .expect("valid");
        engine.handle_timeout(later);
        let reached: Vec<u8> = peers
            .iter()
            .copied()
            .filter(|p| !sent(&mut engine, *p).is_empty())
            .collect();
        assert_eq!(reached.len(), max);
        assert!(reached.iter().all(|p| engine.in_relay_set(p)));
        // A member leaves: another peer takes its place.
        engine.remove_peer(&reached[0]);
        assert_eq!(members(&engine), max);
        let compacts_to = |engine: &mut RelayEngine<u8>| -> Vec<u8> {
            peers
                .iter()
                .copied()
                .filter(|p| {
                    sent(engine, *p)
                        .iter()
                        .any(|m| matches!(m, RelayMessage::CompactBlock(_)))
                })
                .collect()
        };
        // Our own block goes to all 39: one hop to every peer.
        let (parent, child) = parent_and_child(&key, vec![]);
        host.1.insert(parent.hash(), parent.clone());
        engine.propagate_block(later, parent);
        assert_eq!(compacts_to(&mut engine).len(), 39);
        // A block from a peer outside the set goes to the set only.
        let from = *peers
            .iter()
            .find(|p| !engine.in_relay_set(p) && **p != reached[0])
            .expect("a peer outside the set");
        engine.handle_message_deferred(
            later,
            from,
            RelayMessage::CompactBlock(CompactBlock::of(&child)),
            &mut host,
        );
        let relayed = compacts_to(&mut engine);
        assert_eq!(relayed.len(), max);
        assert!(relayed.iter().all(|p| engine.in_relay_set(p)));
    }

    /// The set is a uniform sample of the peers: the one every node connects to first (a
    /// bootstrap node) is in about max/peers of the nodes' sets, not in all of them.
    #[test]
    fn the_first_peer_is_not_in_every_nodes_relay_set() {
        let nodes = 400;
        let with_first = (0..nodes)
            .filter(|seed| {
                let mut engine: RelayEngine<u8> =
                    RelayEngine::new(PropagationConfig::default(), *seed);
                for p in 0..50 {
                    engine.add_peer(p, Capabilities::NONE);
                }
                engine.in_relay_set(&0)
            })
            .count();
        // Expected 8/50 = 16% (64 of 400); the bounds are over 4 standard deviations out.
        assert!((35..=95).contains(&with_first), "{with_first} of {nodes}");
    }

    /// Slowness is not misbehaviour: fifty requests that time out together cost the peer one
    /// timeout, and it is blamed again only a `request_timeout` later.
    #[test]
    fn a_burst_of_timeouts_from_one_peer_is_one_offence() {
        let key = Keypair::from_secret(&[5; 32]);
        let mut host = Mempool::default();
        let mut engine = engine_with_peers(&[1]);
        let timeout = engine.config().request_timeout;
        let start = Instant::now();
        let announce = |range: std::ops::Range<u64>| {
            RelayMessage::Announce(range.map(|n| InvItem::Tx(tx(&key, n).id())).collect())
        };
        engine.handle_message(start, 1, announce(0..50), &mut host);
        assert_eq!(sent(&mut engine, 1).len(), 1, "one request for all fifty");
        // Half a timeout later, fifty more: they are due in a second pass of their own.
        let later = start + timeout / 2;
        engine.handle_message(later, 1, announce(50..100), &mut host);
        sent(&mut engine, 1);
        let penalties = |engine: &mut RelayEngine<u8>| {
            events(engine)
                .into_iter()
                .filter(|e| matches!(e, RelayEvent::Penalty { .. }))
                .count()
        };
        engine.handle_timeout(start + timeout);
        assert_eq!(penalties(&mut engine), 1);
        engine.handle_timeout(later + timeout);
        assert_eq!(penalties(&mut engine), 0, "within the window: forgiven");
        assert_eq!(engine.metrics().slowness_forgiven, 99);
        // A full window later it can be blamed again.
        engine.handle_message(later + timeout, 1, announce(100..101), &mut host);
        engine.handle_timeout(later + timeout * 2);
        assert_eq!(penalties(&mut engine), 1);
    }

    fn parent_and_child(key: &Keypair, txs: Vec<Transaction>) -> (Block, Block) {
        let parent = Block::build(key, BlockHash([0; 32]), Height(0), TimestampMs(0), vec![]);
        let child = Block::build(key, parent.hash(), Height(1), TimestampMs(1_000), txs);
        (parent, child)
    }

    fn engine_with_peers(peers: &[u8]) -> RelayEngine<u8> {
        let mut engine = RelayEngine::new(PropagationConfig::default(), 1);
        for p in peers {
            engine.add_peer(*p, Capabilities::NONE);
        }
        engine
    }

    /// BIP152 high-bandwidth relay: a compact block whose header is valid is queued to the peers
    /// that lack it before its body is imported; the import runs when the adapter asks, after
    /// it has sent the frames.
    #[test]
    fn a_compact_block_is_queued_to_peers_before_its_body_is_imported() {
        let key = Keypair::from_secret(&[7; 32]);
        let txs = vec![tx(&key, 1), tx(&key, 2)];
        let (parent, block) = parent_and_child(&key, txs.clone());
        let hash = block.hash();
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        for t in txs {
            host.0.insert(t.id(), t);
        }
        let mut engine = engine_with_peers(&[1, 2, 3]);
        let now = Instant::now();
        let compact = CompactBlock::of(&block);
        engine.handle_message_deferred(
            now,
            1,
            RelayMessage::CompactBlock(compact.clone()),
            &mut host,
        );
        // Queued to 2 and 3 (not back to 1), and nothing imported yet.
        for peer in [2, 3] {
            assert_eq!(
                sent(&mut engine, peer),
                vec![RelayMessage::CompactBlock(compact.clone())]
            );
        }
        assert!(sent(&mut engine, 1).is_empty());
        assert!(engine.has_pending_imports());
        assert!(!host.has_block(&hash), "imported before the relay left");
        assert!(!events(&mut engine).iter().any(|e| matches!(
            e,
            RelayEvent::NewBlock { .. } | RelayEvent::BlockReceived { .. }
        )));
        // The rebuild from the mempool comes next, still before the import.
        engine.run_pending_rebuilds(now, &mut host);
        assert_eq!(
            events(&mut engine),
            vec![RelayEvent::BlockReceived { hash, from: 1 }]
        );
        assert!(engine.has_pending_imports() && !host.has_block(&hash));
        // A peer asking for the body meanwhile waits for the import instead of a NotFound.
        engine.handle_message_deferred(
            now,
            2,
            RelayMessage::BlockTxnsRequest {
                block: hash,
                indexes: vec![1],
            },
            &mut host,
        );
        assert!(sent(&mut engine, 2).is_empty());

        let imports = engine.run_pending_imports(now, &mut host);
        assert_eq!(
            imports,
            vec![BlockImport {
                hash,
                from: Some(1),
                verdict: BlockVerdict::Imported
            }]
        );
        assert!(host.has_block(&hash) && !engine.has_pending_imports());
        assert_eq!(
            sent(&mut engine, 2),
            vec![RelayMessage::BlockTxns {
                block: hash,
                txs: vec![block.txs[1].clone()]
            }]
        );
        let events = events(&mut engine);
        assert!(events.contains(&RelayEvent::NewBlock {
            hash,
            from: Some(1)
        }));
        assert!(events.contains(&RelayEvent::UsefulDelivery(1)));
        // The relay happened once: a second copy is a duplicate, and nothing more is queued.
        engine.handle_message(now, 3, RelayMessage::CompactBlock(compact), &mut host);
        assert!(sent(&mut engine, 2).is_empty() && sent(&mut engine, 1).is_empty());
        assert_eq!(engine.metrics().block.duplicates, 1);
    }

    /// A compact block missing transactions is relayed on its header too, without waiting for
    /// the missing transactions' round trip.
    #[test]
    fn a_compact_block_is_relayed_before_its_missing_transactions_arrive() {
        let key = Keypair::from_secret(&[8; 32]);
        let (parent, block) = parent_and_child(&key, vec![tx(&key, 1)]);
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        let mut engine = engine_with_peers(&[1, 2]);
        let now = Instant::now();
        let compact = CompactBlock::of(&block);
        engine.handle_message_deferred(
            now,
            1,
            RelayMessage::CompactBlock(compact.clone()),
            &mut host,
        );
        assert_eq!(
            sent(&mut engine, 2),
            vec![RelayMessage::CompactBlock(compact)]
        );
        // The rebuild waits until the relayed frames have left.
        assert!(sent(&mut engine, 1).is_empty());
        assert!(engine.has_pending_imports());
        assert!(engine.run_pending_imports(now, &mut host).is_empty());
        assert_eq!(
            sent(&mut engine, 1),
            vec![RelayMessage::BlockTxnsRequest {
                block: block.hash(),
                indexes: vec![0]
            }]
        );
        assert!(!engine.has_pending_imports());
        engine.handle_message_deferred(
            now,
            1,
            RelayMessage::BlockTxns {
                block: block.hash(),
                txs: block.txs.clone(),
            },
            &mut host,
        );
        assert!(engine.has_pending_imports());
        engine.run_pending_imports(now, &mut host);
        assert!(host.has_block(&block.hash()));
    }

    /// The producer signed a block whose body is invalid (a transaction with a forged
    /// signature). We relay its compact form on the valid header, as BIP152 does; the import
    /// then fails. Nobody who merely relayed it is blamed, nobody is served its body, and
    /// requests that waited for it are answered `NotFound`.
    #[test]
    fn an_invalid_body_relayed_on_its_header_is_not_served_and_its_relayer_not_blamed() {
        let key = Keypair::from_secret(&[9; 32]);
        let good = tx(&key, 1);
        let mut forged = tx(&key, 2);
        forged.signature.0[0] ^= 1;
        let (parent, block) = parent_and_child(&key, vec![good.clone(), forged.clone()]);
        let hash = block.hash();
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        host.0.insert(good.id(), good);
        let mut engine = engine_with_peers(&[1, 2, 3]);
        let now = Instant::now();
        engine.handle_message_deferred(
            now,
            1,
            RelayMessage::CompactBlock(CompactBlock::of(&block)),
            &mut host,
        );
        assert!(matches!(
            sent(&mut engine, 2).as_slice(),
            [RelayMessage::CompactBlock(_)]
        ));
        // The rebuild lacks the forged transaction and asks peer 1 for it.
        assert!(engine.run_pending_imports(now, &mut host).is_empty());
        sent(&mut engine, 1);
        sent(&mut engine, 3);
        // Peer 1 supplies the missing (forged) transaction; peer 2 asks for the body before and
        // after the rebuild completes.
        engine.handle_message_deferred(
            now,
            2,
            RelayMessage::Request(vec![InvItem::Block(hash)]),
            &mut host,
        );
        engine.handle_message_deferred(
            now,
            1,
            RelayMessage::BlockTxns {
                block: hash,
                txs: vec![forged],
            },
            &mut host,
        );
        engine.handle_message_deferred(
            now,
            3,
            RelayMessage::BlockTxnsRequest {
                block: hash,
                indexes: vec![0, 1],
            },
            &mut host,
        );
        assert!(sent(&mut engine, 2).is_empty() && sent(&mut engine, 3).is_empty());
        let imports = engine.run_pending_imports(now, &mut host);
        assert_eq!(imports[0].verdict, BlockVerdict::Invalid);
        // A short-id collision looks the same: the full block is asked of the sender, which
        // never validated it either and says so.
        assert_eq!(
            sent(&mut engine, 1),
            vec![RelayMessage::Request(vec![InvItem::Block(hash)])]
        );
        engine.handle_message(
            now,
            1,
            RelayMessage::NotFound(vec![InvItem::Block(hash)]),
            &mut host,
        );
        let not_found = RelayMessage::NotFound(vec![InvItem::Block(hash)]);
        assert_eq!(sent(&mut engine, 2), vec![not_found.clone()]);
        assert_eq!(sent(&mut engine, 3), vec![not_found.clone()]);
        // Later requests: still not served.
        for msg in [
            RelayMessage::Request(vec![InvItem::Block(hash)]),
            RelayMessage::BlockTxnsRequest {
                block: hash,
                indexes: vec![0],
            },
        ] {
            engine.handle_message(now, 2, msg, &mut host);
        }
        assert_eq!(sent(&mut engine, 2), vec![not_found.clone(), not_found]);
        let events = events(&mut engine);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, RelayEvent::Penalty { .. } | RelayEvent::NewBlock { .. })),
            "{events:?}"
        );
        assert!(!host.has_block(&hash));
    }

    /// A full block is served only after the server's chain validated it: one that fails import
    /// is the server's fault (`InvalidBlockBody`), unlike a compact block relayed on its header.
    #[test]
    fn a_full_block_with_an_invalid_body_costs_its_server() {
        let key = Keypair::from_secret(&[10; 32]);
        let mut forged = tx(&key, 2);
        forged.signature.0[0] ^= 1;
        let (parent, block) = parent_and_child(&key, vec![forged]);
        let hash = block.hash();
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent);
        let mut engine = engine_with_peers(&[1, 2]);
        let now = Instant::now();
        // Wrong short ids under the valid header: the rebuild fails, the block is fetched.
        let mut wrong = CompactBlock::of(&block);
        wrong.short_ids.clear();
        engine.handle_message(now, 1, RelayMessage::CompactBlock(wrong), &mut host);
        assert!(sent(&mut engine, 1).contains(&RelayMessage::Request(vec![InvItem::Block(hash)])));
        assert!(
            !events(&mut engine)
                .iter()
                .any(|e| matches!(e, RelayEvent::Penalty { .. }))
        );
        engine.handle_message(now, 1, RelayMessage::Block(block), &mut host);
        assert_eq!(
            events(&mut engine),
            vec![
                RelayEvent::BlockReceived { hash, from: 1 },
                RelayEvent::Penalty {
                    peer: 1,
                    offence: Offence::InvalidBlockBody
                }
            ]
        );
        assert!(
            !sent(&mut engine, 2)
                .iter()
                .any(|m| matches!(m, RelayMessage::Block(_)))
        );
    }

    /// Our own block goes out before its import, and a failed import is reported to the caller;
    /// a block whose header fails is not pushed at all.
    #[test]
    fn a_new_local_block_is_pushed_first_and_its_import_reported() {
        let key = Keypair::from_secret(&[11; 32]);
        let good = tx(&key, 1);
        let (parent, block) = parent_and_child(&key, vec![good]);
        let hash = block.hash();
        let mut host = Mempool::default();
        host.1.insert(parent.hash(), parent.clone());
        let mut engine = engine_with_peers(&[1]);
        let now = Instant::now();
        engine.propagate_new_block(now, block.clone(), &mut host);
        assert_eq!(
            sent(&mut engine, 1),
            vec![RelayMessage::CompactBlock(CompactBlock::of(&block))]
        );
        assert!(!host.has_block(&hash));
        assert_eq!(
            engine.run_pending_imports(now, &mut host),
            vec![BlockImport {
                hash,
                from: None,
                verdict: BlockVerdict::Imported
            }]
        );
        assert!(events(&mut engine).contains(&RelayEvent::NewBlock { hash, from: None }));

        // A valid header over an invalid body: pushed, then reported and never served.
        let mut forged = tx(&key, 3);
        forged.signature.0[0] ^= 1;
        let refused = Block::build(&key, hash, Height(2), TimestampMs(2_000), vec![forged]);
        engine.propagate_new_block(now, refused.clone(), &mut host);
        assert_eq!(sent(&mut engine, 1).len(), 1);
        let imports = engine.run_pending_imports(now, &mut host);
        assert_eq!(imports[0].verdict, BlockVerdict::Invalid);
        engine.handle_message(
            now,
            1,
            RelayMessage::Request(vec![InvItem::Block(refused.hash())]),
            &mut host,
        );
        assert_eq!(
            sent(&mut engine, 1),
            vec![RelayMessage::NotFound(vec![InvItem::Block(refused.hash())])]
        );

        // A bad header (signed by a key that is not the block's producer): never pushed.
        let mut bad = Block::build(&key, hash, Height(2), TimestampMs(3_000), vec![]);
        bad.header.timestamp_ms = TimestampMs(3_001);
        engine.propagate_new_block(now, bad.clone(), &mut host);
        assert!(sent(&mut engine, 1).is_empty());
        let imports = engine.run_pending_imports(now, &mut host);
        assert_eq!(imports[0].verdict, BlockVerdict::Invalid);
    }

    /// A host that records how it was asked.
    #[derive(Default)]
    struct Counting(Mempool, Vec<usize>);

    impl RelayHost for Counting {
        fn submit_transaction(&mut self, tx: Transaction) -> TxVerdict {
            self.1.push(1);
            self.0.submit_transaction(tx)
        }
        fn submit_transactions(&mut self, txs: Vec<Transaction>) -> Vec<TxVerdict> {
            self.1.push(txs.len());
            txs.into_iter()
                .map(|tx| self.0.submit_transaction(tx))
                .collect()
        }
        fn transaction(&self, id: &TxId) -> Option<Transaction> {
            self.0.transaction(id)
        }
        fn has_transaction(&self, id: &TxId) -> bool {
            self.0.has_transaction(id)
        }
        fn mempool_ids(&self) -> Vec<TxId> {
            self.0.mempool_ids()
        }
        fn check_header(&mut self, header: &BlockHeader) -> HeaderVerdict {
            self.0.check_header(header)
        }
        fn submit_block(&mut self, block: Block) -> BlockVerdict {
            self.0.submit_block(block)
        }
        fn block(&self, hash: &BlockHash) -> Option<Block> {
            self.0.block(hash)
        }
        fn has_block(&self, hash: &BlockHash) -> bool {
            self.0.has_block(hash)
        }
    }

    /// A `Transactions` batch goes to the host in one call; repeated ids in it are judged as one
    /// by one would: a forgery first does not shadow the real copy, a copy after an accepted one
    /// is a duplicate.
    #[test]
    fn a_transaction_batch_is_validated_in_one_host_call_with_one_by_one_outcomes() {
        let key = Keypair::from_secret(&[12; 32]);
        let (a, b) = (tx(&key, 1), tx(&key, 2));
        let mut forged = a.clone();
        forged.signature.0[0] ^= 1;
        let mut host = Counting::default();
        let mut engine = engine_with_peers(&[1, 2]);
        let now = Instant::now();
        engine.handle_message(
            now,
            1,
            RelayMessage::Transactions(vec![forged.clone(), a.clone(), b.clone(), a.clone()]),
            &mut host,
        );
        // One call for the three distinct ids, one more for the real `a` after its forgery.
        assert_eq!(host.1, vec![2, 1]);
        assert_eq!(host.0.0.get(&a.id()), Some(&a));
        assert!(host.0.0.contains_key(&b.id()));
        let events = events(&mut engine);
        let penalties = events
            .iter()
            .filter(|e| matches!(e, RelayEvent::Penalty { .. }))
            .count();
        assert_eq!(penalties, 1);
        for id in [a.id(), b.id()] {
            assert!(events.contains(&RelayEvent::NewTransaction { id, from: Some(1) }));
        }
        assert_eq!(engine.metrics().tx.received, 2);
        assert_eq!(engine.metrics().tx.duplicates, 1);
        // Both relayed on to peer 2 once the batch delay passes.
        engine.handle_timeout(now + Duration::from_secs(1));
        let to_2 = sent(&mut engine, 2);
        let relayed: usize = to_2
            .iter()
            .map(|m| match m {
                RelayMessage::Transactions(t) => t.len(),
                RelayMessage::Announce(i) => i.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(relayed, 2, "{to_2:?}");
    }
}
