//! The sync client: headers first, then bodies in parallel from several peers, in a sliding
//! window, with adaptive stall timeouts. A deterministic state machine with time passed in.
//!
//! ```text
//!  on_status ──► best peer has more work? ──► GetHeaders(locator) ──► on_response(Headers)
//!                                                 ▲   validate each header against its parent
//!                                                 └── (full reply: ask for more, bounded)
//!  request_bodies ──► GetBlocks(≤16 hashes) to peers that have them, ≤2 in flight each
//!  on_response(Blocks) ──► downloaded ──► take_ready() (in order) ──► chain import (adapter)
//!  handle_timeout ──► staller penalised, its timeout doubled, its hashes go to other peers
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use playergold_primitives::{Block, BlockHash, BlockHeader, Height, Work, merkle_root};

use super::messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REQUEST, Status, SyncRequest, SyncResponse,
};
use crate::relay::PeerKey;
use crate::reputation::Reason;

/// The chain as the sync client sees it. The node implements it over `ChainBackend`.
pub trait SyncHost {
    /// Our genesis hash.
    fn genesis(&self) -> BlockHash;
    /// Our best tip: hash, height, cumulative work.
    fn tip(&self) -> (BlockHash, Height, Work);
    /// A block locator for our best chain.
    fn locator(&self) -> Vec<BlockHash>;
    /// A stored header.
    fn header(&self, hash: &BlockHash) -> Option<BlockHeader>;
    /// Cumulative work of a stored block.
    fn work_of(&self, hash: &BlockHash) -> Option<Work>;
    /// Checks `header` as a child of `parent` (height, producer, signature, slot, time) and
    /// returns the work it adds, or `None` if invalid.
    fn check_header(&self, header: &BlockHeader, parent: &BlockHeader) -> Option<Work>;
}

/// Sync settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Requests in flight per peer.
    pub max_in_flight_per_peer: usize,
    /// Blocks per `GetBlocks`.
    pub blocks_per_request: usize,
    /// How far ahead of the import point bodies are fetched (blocks).
    pub window: usize,
    /// Most validated headers held while their bodies are not yet imported. Bounds the memory a
    /// peer can make us spend on a header chain (16,384 headers ≈ 4 MiB).
    pub max_pending_headers: usize,
    /// First stall timeout for a request; doubled on each stall, reset on progress.
    pub initial_stall_timeout: Duration,
    /// Cap of the stall timeout.
    pub max_stall_timeout: Duration,
    /// Stalls after which a peer is disconnected (rotated out).
    pub max_stalls: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_in_flight_per_peer: 2,
            blocks_per_request: MAX_BLOCKS_PER_REQUEST,
            window: 1_024,
            max_pending_headers: 16_384,
            initial_stall_timeout: Duration::from_secs(2),
            max_stall_timeout: Duration::from_secs(32),
            max_stalls: 3,
        }
    }
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction<P> {
    /// Send a request.
    Request {
        /// To whom.
        peer: P,
        /// What.
        request: SyncRequest,
    },
    /// Report misbehaviour to reputation.
    Penalize {
        /// Who.
        peer: P,
        /// Why.
        reason: Reason,
    },
    /// Disconnect a peer (another network, or rotated out after repeated stalls).
    Disconnect {
        /// Who.
        peer: P,
        /// Whether it is its fault (a stalling peer) or not (another network).
        penalize: bool,
    },
}

/// Where sync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// No peer has more work than us.
    Synced,
    /// Downloading headers.
    Headers,
    /// Downloading and importing bodies.
    Blocks,
}

impl SyncState {
    /// The name shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "synced",
            SyncState::Headers => "headers",
            SyncState::Blocks => "blocks",
        }
    }
}

/// Progress, for the handle, the API and the progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncProgress {
    /// State.
    pub state: SyncState,
    /// Highest height a peer claims.
    pub target_height: Height,
    /// Blocks handed to import since sync started.
    pub imported: u64,
    /// Blocks per second since sync started.
    pub blocks_per_sec: f64,
    /// Estimated seconds to reach the target.
    pub eta_secs: Option<f64>,
}

#[derive(Debug, Clone)]
enum Pending {
    Headers {
        deadline: Instant,
    },
    Blocks {
        hashes: Vec<BlockHash>,
        deadline: Instant,
    },
}

impl Pending {
    fn deadline(&self) -> Instant {
        match self {
            Pending::Headers { deadline } | Pending::Blocks { deadline, .. } => *deadline,
        }
    }
}

#[derive(Debug)]
struct PeerState {
    status: Option<Status>,
    pending: Vec<Pending>,
    stall_timeout: Duration,
    stalls: u32,
}

/// The candidate chain being synced: validated headers above a block we have.
#[derive(Debug)]
struct HeaderChain<P> {
    source: P,
    /// Header of the block below the first pending one (a block we have, or just imported).
    anchor: BlockHeader,
    headers: VecDeque<(BlockHash, BlockHeader)>,
    /// Cumulative work at the last header.
    work: Work,
    /// The source has no more headers after the last one.
    complete: bool,
    /// A headers request is outstanding.
    fetching: bool,
}

/// The sync client.
#[derive(Debug)]
pub struct SyncScheduler<P: PeerKey> {
    config: SyncConfig,
    peers: BTreeMap<P, PeerState>,
    chain: Option<HeaderChain<P>>,
    requested: HashMap<BlockHash, P>,
    downloaded: HashMap<BlockHash, (Block, P)>,
    actions: VecDeque<SyncAction<P>>,
    imported: u64,
    started: Option<Instant>,
    /// Peers whose header chain proved worse than ours lately; not asked again until they
    /// announce a new status.
    exhausted: HashSet<P>,
}

impl<P: PeerKey> SyncScheduler<P> {
    /// A new scheduler.
    pub fn new(config: SyncConfig) -> Self {
        SyncScheduler {
            config,
            peers: BTreeMap::new(),
            chain: None,
            requested: HashMap::new(),
            downloaded: HashMap::new(),
            actions: VecDeque::new(),
            imported: 0,
            started: None,
            exhausted: HashSet::new(),
        }
    }

    /// A peer connected; its status follows.
    pub fn add_peer(&mut self, peer: P) {
        self.peers.entry(peer).or_insert(PeerState {
            status: None,
            pending: Vec::new(),
            stall_timeout: self.config.initial_stall_timeout,
            stalls: 0,
        });
    }

    /// A peer left: its requests go to others.
    pub fn remove_peer(&mut self, now: Instant, peer: &P, host: &impl SyncHost) {
        self.peers.remove(peer);
        self.exhausted.remove(peer);
        self.requested.retain(|_, p| p != peer);
        if self.chain.as_ref().is_some_and(|c| c.source == *peer) {
            self.drop_chain();
        }
        self.drive(now, host);
    }

    /// Validated headers held in memory, waiting for their bodies (bounded by
    /// `max_pending_headers`).
    pub fn pending_headers(&self) -> usize {
        self.chain.as_ref().map_or(0, |c| c.headers.len())
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<SyncAction<P>> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| p.pending.iter().map(Pending::deadline))
            .min()
    }

    /// The request we send a new peer: our status.
    pub fn status_request(host: &impl SyncHost, capabilities: crate::Capabilities) -> Status {
        let (best_hash, best_height, cumulative_work) = host.tip();
        Status {
            genesis: host.genesis(),
            best_hash,
            best_height,
            cumulative_work,
            capabilities,
        }
    }

    /// A peer told us its status (handshake, or a new block it announced).
    pub fn on_status(&mut self, now: Instant, peer: P, status: Status, host: &impl SyncHost) {
        if status.genesis != host.genesis() {
            // Another network: not malice.
            self.peers.remove(&peer);
            self.actions.push_back(SyncAction::Disconnect {
                peer,
                penalize: false,
            });
            return;
        }
        self.add_peer(peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            let changed = p
                .status
                .as_ref()
                .is_none_or(|s| s.best_hash != status.best_hash);
            if changed {
                self.exhausted.remove(&peer);
            }
            p.status = Some(status);
        }
        self.drive(now, host);
    }

    /// The progress of sync.
    pub fn progress(&self, now: Instant, host: &impl SyncHost) -> SyncProgress {
        let (_, height, _) = host.tip();
        let target_height = self
            .peers
            .values()
            .filter_map(|p| p.status.as_ref().map(|s| s.best_height))
            .max()
            .unwrap_or(height)
            .max(height);
        let state = match &self.chain {
            None => SyncState::Synced,
            Some(c) if c.headers.is_empty() && c.fetching => SyncState::Headers,
            Some(_) => SyncState::Blocks,
        };
        let elapsed = self
            .started
            .map(|s| now.saturating_duration_since(s).as_secs_f64())
            .unwrap_or(0.0);
        let blocks_per_sec = if elapsed > 0.0 {
            self.imported as f64 / elapsed
        } else {
            0.0
        };
        let remaining = target_height.0.saturating_sub(height.0) as f64;
        SyncProgress {
            state,
            target_height,
            imported: self.imported,
            blocks_per_sec,
            eta_secs: (blocks_per_sec > 0.0).then(|| remaining / blocks_per_sec),
        }
    }

    fn drop_chain(&mut self) {
        self.chain = None;
        self.requested.clear();
        self.downloaded.clear();
    }

    /// Starts a header download if a peer has more work, then keeps bodies flowing.
    fn drive(&mut self, now: Instant, host: &impl SyncHost) {
        if self.chain.is_none() {
            let (tip, _, our_work) = host.tip();
            let best = self
                .peers
                .iter()
                .filter(|(k, _)| !self.exhausted.contains(k))
                .filter_map(|(k, p)| p.status.as_ref().map(|s| (*k, s.cumulative_work)))
                .filter(|(_, w)| *w > our_work)
                .max_by_key(|(k, w)| (*w, std::cmp::Reverse(*k)));
            let Some((peer, _)) = best else {
                return;
            };
            let Some(anchor) = host.header(&tip) else {
                return;
            };
            self.started.get_or_insert(now);
            self.chain = Some(HeaderChain {
                source: peer,
                anchor,
                headers: VecDeque::new(),
                work: our_work,
                complete: false,
                fetching: false,
            });
            let locator = host.locator();
            self.request_headers(now, peer, locator);
        }
        self.request_bodies(now, host);
    }

    fn request_headers(&mut self, now: Instant, peer: P, locator: Vec<BlockHash>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.pending.push(Pending::Headers {
            deadline: now + p.stall_timeout,
        });
        if let Some(c) = self.chain.as_mut() {
            c.fetching = true;
        }
        self.actions.push_back(SyncAction::Request {
            peer,
            request: SyncRequest::GetHeaders {
                locator,
                max: MAX_HEADERS_PER_REQUEST,
            },
        });
    }

    /// Handles a reply from `peer`.
    pub fn on_response(
        &mut self,
        now: Instant,
        peer: P,
        response: SyncResponse,
        host: &impl SyncHost,
    ) {
        match response {
            SyncResponse::Status(s) => self.on_status(now, peer, s, host),
            SyncResponse::Headers(headers) => self.on_headers(now, peer, headers, host),
            SyncResponse::Blocks(blocks) => self.on_blocks(now, peer, blocks, host),
        }
    }

    fn take_pending(&mut self, peer: &P, pick: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let p = self.peers.get_mut(peer)?;
        let i = p.pending.iter().position(pick)?;
        Some(p.pending.remove(i))
    }

    fn penalize(&mut self, peer: P, reason: Reason) {
        self.actions
            .push_back(SyncAction::Penalize { peer, reason });
    }

    fn on_headers(
        &mut self,
        now: Instant,
        peer: P,
        headers: Vec<BlockHeader>,
        host: &impl SyncHost,
    ) {
        if self
            .take_pending(&peer, |p| matches!(p, Pending::Headers { .. }))
            .is_none()
        {
            self.penalize(peer, Reason::Relay(crate::relay::Offence::Unrequested));
            return;
        }
        let Some(chain) = self.chain.as_mut().filter(|c| c.source == peer) else {
            return;
        };
        chain.fetching = false;
        let full = headers.len() as u32 >= MAX_HEADERS_PER_REQUEST;
        let mut parent = match chain.headers.back() {
            Some((_, h)) => h.clone(),
            None => match headers.first().and_then(|h| host.header(&h.parent)) {
                // The first header may fork below our tip: re-anchor at its parent.
                Some(p) => {
                    chain.work = host.work_of(&p.hash()).unwrap_or(Work(0));
                    chain.anchor = p.clone();
                    p
                }
                None if headers.is_empty() => chain.anchor.clone(),
                None => {
                    self.penalize(peer, Reason::InvalidHeaders);
                    self.exhausted.insert(peer);
                    self.drop_chain();
                    return self.drive(now, host);
                }
            },
        };
        for header in headers {
            let hash = header.hash();
            let valid = if header.parent == parent.hash() {
                host.check_header(&header, &parent)
            } else {
                None
            };
            let Some(work) = valid else {
                self.penalize(peer, Reason::InvalidHeaders);
                self.exhausted.insert(peer);
                self.drop_chain();
                return self.drive(now, host);
            };
            let chain = self.chain.as_mut().expect("chain checked above");
            if chain.headers.len() >= self.config.max_pending_headers {
                // Bounded: the rest is fetched again once bodies drain the queue.
                break;
            }
            chain.work = chain.work.saturating_add(work);
            chain.headers.push_back((hash, header.clone()));
            parent = header;
        }
        let (_, _, our_work) = host.tip();
        let chain = self.chain.as_mut().expect("chain checked above");
        chain.complete = !full;
        if chain.complete
            && chain.work <= our_work
            && chain
                .headers
                .iter()
                .all(|(h, _)| !self.downloaded.contains_key(h))
        {
            // The peer's chain is not better than ours (it claimed more work than it has, or
            // we caught up meanwhile): stop asking it until its status changes.
            self.exhausted.insert(peer);
            self.drop_chain();
            return self.drive(now, host);
        }
        if full && chain.headers.len() < self.config.max_pending_headers {
            let last = chain
                .headers
                .back()
                .map(|(h, _)| *h)
                .unwrap_or(parent.hash());
            self.request_headers(now, peer, vec![last]);
        }
        self.request_bodies(now, host);
    }

    fn request_bodies(&mut self, now: Instant, host: &impl SyncHost) {
        let Some(chain) = self.chain.as_ref() else {
            return;
        };
        let (_, _, our_work) = host.tip();
        // Bodies only for a chain that will beat ours (or may, while headers are still coming).
        if chain.complete && chain.work <= our_work {
            return;
        }
        let mut batches: Vec<(P, Vec<BlockHash>)> = Vec::new();
        let mut busy: HashMap<P, usize> = HashMap::new();
        let mut batch = Vec::new();
        let mut batch_height = Height(0);
        // Assigns a batch to the least stalling, least busy peer that has it.
        let mut flush = |batch: &mut Vec<BlockHash>,
                         height: Height,
                         this: &Self,
                         busy: &mut HashMap<P, usize>|
         -> bool {
            if batch.is_empty() {
                return true;
            }
            let peer = this
                .peers
                .iter()
                .filter(|(k, p)| {
                    p.pending.len() + busy.get(k).copied().unwrap_or(0)
                        < this.config.max_in_flight_per_peer
                        && p.status.as_ref().is_some_and(|s| s.best_height >= height)
                })
                .min_by_key(|(k, p)| {
                    (
                        p.stalls,
                        p.pending.len() + busy.get(k).copied().unwrap_or(0),
                        **k,
                    )
                })
                .map(|(k, _)| *k);
            match peer {
                Some(peer) => {
                    *busy.entry(peer).or_default() += 1;
                    batches.push((peer, std::mem::take(batch)));
                    true
                }
                None => false,
            }
        };
        for (hash, header) in chain.headers.iter().take(self.config.window) {
            if self.requested.contains_key(hash) || self.downloaded.contains_key(hash) {
                continue;
            }
            batch.push(*hash);
            batch_height = header.height;
            if batch.len()
                >= self
                    .config
                    .blocks_per_request
                    .clamp(1, MAX_BLOCKS_PER_REQUEST)
                && !flush(&mut batch, batch_height, self, &mut busy)
            {
                batch.clear();
                break;
            }
        }
        if !flush(&mut batch, batch_height, self, &mut busy) {
            batch.clear();
        }
        for (peer, hashes) in batches {
            for h in &hashes {
                self.requested.insert(*h, peer);
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                p.pending.push(Pending::Blocks {
                    hashes: hashes.clone(),
                    deadline: now + p.stall_timeout,
                });
            }
            self.actions.push_back(SyncAction::Request {
                peer,
                request: SyncRequest::GetBlocks(hashes),
            });
        }
    }

    fn on_blocks(&mut self, now: Instant, peer: P, blocks: Vec<Block>, host: &impl SyncHost) {
        let first = blocks.first().map(Block::hash);
        let Some(Pending::Blocks { hashes, .. }) = self.take_pending(&peer, |p| match p {
            Pending::Blocks { hashes, .. } => first.is_none_or(|f| hashes.contains(&f)),
            Pending::Headers { .. } => false,
        }) else {
            self.penalize(peer, Reason::Relay(crate::relay::Offence::Unrequested));
            return;
        };
        let mut delivered = 0;
        for block in blocks {
            let hash = block.hash();
            let expected = self.chain.as_ref().and_then(|c| {
                c.headers
                    .iter()
                    .find(|(h, _)| *h == hash)
                    .map(|(_, header)| header.tx_root)
            });
            if !hashes.contains(&hash) || expected.is_none() {
                self.penalize(peer, Reason::Relay(crate::relay::Offence::Unrequested));
                continue;
            }
            if merkle_root(&block.tx_ids()) != block.header.tx_root {
                // A body that does not match its header: the peer made it up.
                self.penalize(peer, Reason::InvalidBlock);
                continue;
            }
            self.requested.remove(&hash);
            self.downloaded.insert(hash, (block, peer));
            delivered += 1;
        }
        // Whatever it did not deliver goes back to the pool for any peer.
        for h in &hashes {
            if self.requested.get(h) == Some(&peer) {
                self.requested.remove(h);
            }
        }
        if delivered > 0
            && let Some(p) = self.peers.get_mut(&peer)
        {
            p.stall_timeout = self.config.initial_stall_timeout;
        }
        self.request_bodies(now, host);
    }

    /// Blocks ready for import, in chain order, with the peer that delivered each.
    pub fn take_ready(&mut self, now: Instant, host: &impl SyncHost) -> Vec<(Block, P)> {
        let mut out = Vec::new();
        let Some(chain) = self.chain.as_mut() else {
            return out;
        };
        while let Some((hash, _)) = chain.headers.front() {
            let Some(entry) = self.downloaded.remove(hash) else {
                break;
            };
            if let Some((_, header)) = chain.headers.pop_front() {
                chain.anchor = header;
            }
            out.push(entry);
        }
        self.imported += out.len() as u64;
        let done = chain.headers.is_empty() && chain.complete;
        let refill = !chain.complete
            && !chain.fetching
            && chain.headers.len() < self.config.max_pending_headers / 2;
        let (source, last) = (chain.source, chain.anchor.hash());
        if done {
            // Finished this chain; `drive` looks for more work (another peer, a newer tip).
            self.chain = None;
        } else if refill {
            let last = chain.headers.back().map(|(h, _)| *h).unwrap_or(last);
            self.request_headers(now, source, vec![last]);
        }
        if done {
            self.drive(now, host);
        } else {
            self.request_bodies(now, host);
        }
        out
    }

    /// The chain refused a block that `peer` delivered: penalise it and start over.
    pub fn on_invalid_block(&mut self, now: Instant, peer: P, host: &impl SyncHost) {
        self.penalize(peer, Reason::InvalidBlock);
        self.exhausted.insert(peer);
        self.drop_chain();
        self.drive(now, host);
    }

    /// Stalled requests: penalise, back off, hand the work to other peers.
    pub fn handle_timeout(&mut self, now: Instant, host: &impl SyncHost) {
        let peers: Vec<P> = self.peers.keys().copied().collect();
        for peer in peers {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let (expired, kept): (Vec<Pending>, Vec<Pending>) =
                p.pending.drain(..).partition(|r| r.deadline() <= now);
            p.pending = kept;
            if expired.is_empty() {
                continue;
            }
            p.stalls += 1;
            p.stall_timeout = (p.stall_timeout * 2).min(self.config.max_stall_timeout);
            let rotate = p.stalls >= self.config.max_stalls;
            for r in expired {
                match r {
                    Pending::Blocks { hashes, .. } => {
                        for h in hashes {
                            if self.requested.get(&h) == Some(&peer) {
                                self.requested.remove(&h);
                            }
                        }
                    }
                    Pending::Headers { .. } => {
                        if self.chain.as_ref().is_some_and(|c| c.source == peer) {
                            self.exhausted.insert(peer);
                            self.drop_chain();
                        }
                    }
                }
            }
            self.actions.push_back(SyncAction::Penalize {
                peer,
                reason: Reason::Stalled,
            });
            if rotate {
                self.peers.remove(&peer);
                self.requested.retain(|_, p| *p != peer);
                self.actions.push_back(SyncAction::Disconnect {
                    peer,
                    penalize: true,
                });
            }
        }
        self.drive(now, host);
    }
}
