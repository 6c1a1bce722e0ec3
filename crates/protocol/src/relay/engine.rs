//! The propagation engine: who gets what, when, and what to do with what arrives.
//!
//! A plain struct with no I/O and no clock: feed it `(now, peer, message)` and local submissions,
//! let it consult the chain through [`RelayHost`], then drain what it wants sent with
//! [`RelayEngine::poll_transmit`], what happened with [`RelayEngine::poll_event`], and call
//! [`RelayEngine::handle_timeout`] at [`RelayEngine::poll_timeout`].

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use playergold_primitives::{Block, BlockHash, BlockHeader, PublicKey, Transaction, TxId};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::bounded::{BoundedMap, BoundedSet};
use super::config::{PropagationConfig, Strategy};
use super::messages::{CLASSES, Class, CompactBlock, InvItem, RelayMessage, ShortId};
use crate::ai::{Challenge, ChallengeId, Solution, SolutionId, Verdict};
use crate::capabilities::Capabilities;

/// Ids remembered per peer as "known to have". 4,096 × ~40 bytes × 50 peers ≈ 8 MiB at most.
pub const MAX_KNOWN_PER_PEER: usize = 4_096;
/// Items we are waiting for (announced, not yet received). Beyond this, new announcements are
/// ignored until requests complete: a flood of announcements cannot grow our memory.
pub const MAX_WANTED: usize = 20_000;
/// Announcers remembered per wanted item, to retry from.
pub const MAX_ANNOUNCERS: usize = 8;
/// Compact blocks being rebuilt at once.
pub const MAX_PARTIAL_BLOCKS: usize = 16;
/// Recently assembled blocks kept to answer `BlockTxnsRequest` before the chain has them.
pub const RECENT_BLOCKS: usize = 8;
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
    /// A mempool transaction.
    fn transaction(&self, id: &TxId) -> Option<Transaction>;
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
    batch_deadline: Option<Instant>,
    slow: bool,
}

#[derive(Debug)]
struct Wanted<P> {
    announcers: VecDeque<P>,
    asked: Option<(P, Instant)>,
    retries: u8,
}

#[derive(Debug)]
struct PartialBlock<P> {
    header: BlockHeader,
    txs: Vec<Option<Transaction>>,
    from: P,
    deadline: Instant,
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
    partials: HashMap<BlockHash, PartialBlock<P>>,
    recent_blocks: BoundedMap<BlockHash, Block>,
    challenges: BoundedMap<ChallengeId, (Challenge, Option<P>)>,
    tallies: BoundedMap<SolutionId, Tally>,
    events: VecDeque<RelayEvent<P>>,
    metrics: RelayMetrics,
}

impl<P: PeerKey> RelayEngine<P> {
    /// A new engine. `seed` drives the gossip subset choice (tests pass a fixed one).
    pub fn new(config: PropagationConfig, seed: u64) -> Self {
        RelayEngine {
            seen: BoundedSet::new(config.duplicate_cache_size),
            config,
            rng: StdRng::seed_from_u64(seed),
            peers: HashMap::new(),
            wanted: HashMap::new(),
            partials: HashMap::new(),
            recent_blocks: BoundedMap::new(RECENT_BLOCKS),
            challenges: BoundedMap::new(MAX_CHALLENGES),
            tallies: BoundedMap::new(MAX_TALLIES),
            events: VecDeque::new(),
            metrics: RelayMetrics::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &PropagationConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> RelayMetrics {
        self.metrics
    }

    /// A peer connected (and speaks the relay protocol).
    pub fn add_peer(&mut self, peer: P, caps: Capabilities) {
        self.peers.entry(peer).or_insert_with(|| Peer {
            caps,
            known: BoundedSet::new(MAX_KNOWN_PER_PEER),
            queue: PeerQueue::default(),
            pending_txs: Vec::new(),
            pending_announce: Vec::new(),
            batch_deadline: None,
            slow: false,
        });
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
        self.peers.remove(peer);
        for w in self.wanted.values_mut() {
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
        let batches = self.peers.values().filter_map(|p| p.batch_deadline);
        let requests = self.wanted.values().filter_map(|w| w.asked.map(|(_, t)| t));
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
        let expired: Vec<(InvItem, P)> = self
            .wanted
            .iter()
            .filter_map(|(item, w)| match w.asked {
                Some((p, t)) if t <= now => Some((*item, p)),
                _ => None,
            })
            .collect();
        for (item, peer) in expired {
            self.events.push_back(RelayEvent::Penalty {
                peer,
                offence: Offence::RequestTimeout,
            });
            self.retry(now, item);
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
                self.want(now, InvItem::Block(hash), partial.from);
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
                self.seen.insert(InvItem::Tx(id));
                self.events
                    .push_back(RelayEvent::NewTransaction { id, from: None });
                self.relay_tx(now, tx, None);
                Ok(id)
            }
            other => Err(other),
        }
    }

    /// A block this node produced and imported: push it compact to every peer.
    pub fn propagate_block(&mut self, _now: Instant, block: Block) {
        let hash = block.hash();
        self.seen.insert(InvItem::Block(hash));
        self.relay_block(&block, None);
        self.recent_blocks.insert(hash, block);
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

    /// Handles one message from `peer`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        peer: P,
        msg: RelayMessage,
        host: &mut impl RelayHost,
    ) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        match msg {
            RelayMessage::Announce(items) => self.on_announce(now, peer, items, host),
            RelayMessage::Request(items) => self.on_request(peer, items, host),
            RelayMessage::NotFound(items) => {
                for item in items {
                    if self
                        .wanted
                        .get(&item)
                        .is_some_and(|w| matches!(w.asked, Some((p, _)) if p == peer))
                    {
                        self.retry(now, item);
                    }
                }
            }
            RelayMessage::Transactions(txs) => {
                for tx in txs {
                    self.on_transaction(now, peer, tx, host);
                }
            }
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
            let room = self.wanted.len() < MAX_WANTED;
            match self.wanted.get_mut(&item) {
                Some(w) if w.announcers.len() < MAX_ANNOUNCERS && !w.announcers.contains(&peer) => {
                    w.announcers.push_back(peer);
                }
                Some(_) => {}
                None if room => {
                    self.wanted.insert(
                        item,
                        Wanted {
                            announcers: VecDeque::new(),
                            asked: Some((peer, now + self.config.request_timeout)),
                            retries: 0,
                        },
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
            Wanted {
                announcers: VecDeque::new(),
                asked: Some((peer, now + self.config.request_timeout)),
                retries: 0,
            },
        );
        self.enqueue(&peer, Class::Reply, RelayMessage::Request(vec![item]));
    }

    /// The current request for `item` failed: ask the next announcer, or give up.
    fn retry(&mut self, now: Instant, item: InvItem) {
        let Some(w) = self.wanted.get_mut(&item) else {
            return;
        };
        let next = if w.retries < self.config.max_retries {
            w.announcers.pop_front()
        } else {
            None
        };
        match next {
            Some(peer) => {
                w.retries += 1;
                w.asked = Some((peer, now + self.config.request_timeout));
                self.metrics.retries += 1;
                self.enqueue(&peer, Class::Reply, RelayMessage::Request(vec![item]));
            }
            None => {
                self.wanted.remove(&item);
            }
        }
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
                InvItem::Block(hash) => {
                    match self
                        .recent_blocks
                        .get(&hash)
                        .cloned()
                        .or_else(|| host.block(&hash))
                    {
                        Some(b) => {
                            self.mark_known(&peer, item);
                            self.metrics.block.sent += 1;
                            self.enqueue(&peer, Class::Reply, RelayMessage::Block(b));
                        }
                        None => missing.push(item),
                    }
                }
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

    fn on_transaction(
        &mut self,
        now: Instant,
        peer: P,
        tx: Transaction,
        host: &mut impl RelayHost,
    ) {
        let id = tx.id();
        let item = InvItem::Tx(id);
        self.mark_known(&peer, item);
        if self.seen.contains(&item) {
            self.wanted.remove(&item);
            self.metrics.tx.duplicates += 1;
            return;
        }
        let verdict = host.submit_transaction(tx.clone());
        // The id does not cover the signature: a forged copy of a valid transaction has its id.
        // Only a transaction that validated marks the id seen (and stops our request for it), or
        // a forgery sent first would make us drop the real one as a duplicate.
        if verdict != TxVerdict::Invalid {
            self.seen.insert(item);
            self.wanted.remove(&item);
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
        if self.seen.contains(&item) || self.partials.contains_key(&hash) {
            self.metrics.block.duplicates += 1;
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
        // Rebuild from the mempool: map every mempool tx to its short id under this block.
        let mut by_short: HashMap<ShortId, TxId> = HashMap::new();
        if !cb.short_ids.is_empty() {
            for id in host.mempool_ids() {
                by_short.insert(ShortId::new(&hash, &id), id);
            }
        }
        let txs: Vec<Option<Transaction>> = cb
            .short_ids
            .iter()
            .map(|s| by_short.get(s).and_then(|id| host.transaction(id)))
            .collect();
        let missing: Vec<u32> = txs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i as u32)
            .collect();
        let partial = PartialBlock {
            header: cb.header,
            txs,
            from: peer,
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
        self.accept_block(now, partial.from, hash, block, host, true);
    }

    /// A block we hold in full from `peer`: relay (when it came compact, right after the header
    /// check and rebuild, as BIP152's high-bandwidth mode) and import.
    fn accept_block(
        &mut self,
        now: Instant,
        peer: P,
        hash: BlockHash,
        block: Block,
        host: &mut impl RelayHost,
        rebuilt_from_compact: bool,
    ) {
        let item = InvItem::Block(hash);
        if rebuilt_from_compact {
            self.seen.insert(item);
            self.relay_block(&block, Some(peer));
            self.recent_blocks.insert(hash, block.clone());
        }
        let verdict = host.submit_block(block.clone());
        if rebuilt_from_compact && verdict != BlockVerdict::Imported {
            // We serve only bodies the chain validated. A rebuilt body that was not (a short-id
            // collision, wrong short ids under a valid header, a block refused for a local reason
            // before its body was checked) would make the peers we serve it to blame us.
            self.recent_blocks.remove(&hash);
        }
        match verdict {
            BlockVerdict::Imported => {
                self.metrics.block.received += 1;
                self.events.push_back(RelayEvent::UsefulDelivery(peer));
                self.events.push_back(RelayEvent::NewBlock {
                    hash,
                    from: Some(peer),
                });
                if !rebuilt_from_compact {
                    self.seen.insert(item);
                    self.relay_block(&block, Some(peer));
                    self.recent_blocks.insert(hash, block);
                }
            }
            BlockVerdict::Known => self.metrics.block.duplicates += 1,
            BlockVerdict::Orphan => self.events.push_back(RelayEvent::MissingParent {
                hash,
                parent: block.header.parent,
                peer,
            }),
            BlockVerdict::Invalid if rebuilt_from_compact => {
                // A short-id collision rebuilds a wrong body: fetch the real block once before
                // blaming anyone.
                self.metrics.compact_fallback += 1;
                self.want(now, item, peer);
            }
            BlockVerdict::Invalid => self.penalize(peer, Offence::InvalidBlockBody),
            BlockVerdict::Refused => {}
        }
    }

    fn on_block_txns_request(
        &mut self,
        peer: P,
        hash: BlockHash,
        indexes: Vec<u32>,
        host: &impl RelayHost,
    ) {
        let Some(block) = self
            .recent_blocks
            .get(&hash)
            .cloned()
            .or_else(|| host.block(&hash))
        else {
            self.enqueue(
                &peer,
                Class::Reply,
                RelayMessage::NotFound(vec![InvItem::Block(hash)]),
            );
            return;
        };
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
            RelayMessage::BlockTxns { block: hash, txs },
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
            self.penalize(peer, Offence::Unrequested);
            return;
        };
        if partial.from != peer {
            self.partials.insert(hash, partial);
            self.penalize(peer, Offence::Unrequested);
            return;
        }
        let mut supplied = txs.into_iter();
        for slot in partial.txs.iter_mut().filter(|t| t.is_none()) {
            *slot = supplied.next();
        }
        if partial.txs.iter().any(Option::is_none) || supplied.next().is_some() {
            self.penalize(peer, Offence::MalformedReply);
            self.metrics.compact_fallback += 1;
            self.want(now, InvItem::Block(hash), peer);
            return;
        }
        self.complete_block(now, hash, partial, host);
    }

    fn on_block(&mut self, now: Instant, peer: P, block: Block, host: &mut impl RelayHost) {
        let hash = block.hash();
        let item = InvItem::Block(hash);
        self.mark_known(&peer, item);
        let requested = self.wanted.remove(&item).is_some();
        self.partials.remove(&hash);
        if host.has_block(&hash) {
            self.metrics.block.duplicates += 1;
            return;
        }
        if !requested {
            // Full blocks are only sent on request; an unsolicited one still gets checked.
            self.penalize(peer, Offence::Unrequested);
        }
        match host.check_header(&block.header) {
            HeaderVerdict::Invalid => self.penalize(peer, Offence::InvalidHeader),
            HeaderVerdict::Known => self.metrics.block.duplicates += 1,
            HeaderVerdict::UnknownParent | HeaderVerdict::Valid => {
                self.accept_block(now, peer, hash, block, host, false)
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
        let item = InvItem::Tx(tx.id());
        let mut targets = self.eligible(item, from);
        let push = match self.config.tx_strategy {
            Strategy::Gossip => {
                targets.shuffle(&mut self.rng);
                self.config.gossip_factor.of(targets.len())
            }
            Strategy::Flood | Strategy::Directed => targets.len(),
        };
        let deadline = now + self.config.batch_delay;
        let batch = self.config.batch_size.max(1);
        for (i, peer) in targets.into_iter().enumerate() {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            p.known.insert(item);
            if i < push {
                p.pending_txs.push(tx.clone());
            } else {
                p.pending_announce.push(item);
            }
            p.batch_deadline.get_or_insert(deadline);
            if p.pending_txs.len() >= batch || p.pending_announce.len() >= batch {
                self.flush(&peer);
            }
        }
    }

    fn relay_block(&mut self, block: &Block, from: Option<P>) {
        let item = InvItem::Block(block.hash());
        let compact = RelayMessage::CompactBlock(CompactBlock::of(block));
        for peer in self.eligible(item, from) {
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
}
