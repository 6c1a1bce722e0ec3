//! The sync client: headers first, then bodies in parallel from several peers, in a sliding
//! window, with adaptive stall timeouts. A deterministic state machine with time passed in.
//!
//! ```text
//!  triggers: on_status / on_announced (more work) / on_orphan (unknown parent) / periodic check
//!     │
//!     ▼ best candidate peer (most work; equal work on another branch; unknown work last)
//!  GetHeaders(locator) ──► on_response(Headers) ── SyncHost::check_header, one by one
//!     │   kept ≤ max_pending_headers; past that while not yet heavier than our chain, only
//!     │   counted (presync), then fetched again from the fork point once proven heavier
//!     ▼ proven heavier (or equal work on another branch: the chain's fork choice decides)
//!  cross-check: GetHeaders(anchor) to a second peer claiming the same tip; a valid but
//!     │   different answer drops this chain and fetches the other branch
//!     ▼
//!  GetBlocks(≤16 hashes) to peers that have them, ≤ max_in_flight_per_peer each, in a window
//!  on_response(Blocks) ──► tx root checked against the header ──► take_ready() (in order)
//!     ──► chain import (adapter) ──► on_invalid_block() if the chain refuses one
//!  handle_timeout ──► staller penalised, its timeout doubled (reset on progress), its work
//!                     handed to other peers, rotated out after max_stalls; periodic status poll
//!  Busy ──► no penalty: the work goes to other peers, that peer waits its retry hint
//! ```
//!
//! Nothing survives a restart in here: a new scheduler starts from what the host has stored
//! (its tip and locator), so a node killed mid-sync fetches only what it has not stored.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use playergold_primitives::{Block, BlockHash, BlockHeader, Hash32, Height, Work, merkle_root};
use serde::{Deserialize, Serialize};

use super::messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REQUEST, MAX_LOCATOR_LEN, Status, SyncRequest,
    SyncResponse,
};
use crate::Capabilities;
use crate::relay::{Offence, PeerKey};
use crate::reputation::Reason;

/// Most validated headers held while their bodies are not imported (the default of
/// `SyncConfig::max_pending_headers`). A header is about 250 bytes in memory, so 16,384 of them
/// is about 4 MiB. Unvalidated headers are never held beyond one decoded reply
/// (`MAX_HEADERS_PER_REQUEST`): each is checked against its parent as it arrives. A longer
/// header chain that is not yet heavier than ours is only counted, not kept (presync), so a peer
/// cannot make us hold a long low-work chain.
pub const MAX_PENDING_HEADERS: usize = 16_384;
/// First stall timeout of a request: a 16-block reply of up to 8 MiB takes well under 2 s on a
/// healthy link.
pub const INITIAL_STALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Cap of the stall timeout after doublings: a slow but live peer gets 32 s per request.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(32);
/// Longest wait a `Busy` reply can impose on us: the retry hint is the peer's number.
pub const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(10);
/// Consecutive `Busy` replies with no delivery after which a peer counts as stalling: an honest
/// server's bucket refills in 50 ms, so eight in a row means it does not mean to serve us.
pub const MAX_BUSY_STREAK: u32 = 8;
/// How often every peer is asked for its status (the periodic check): catches a better chain we
/// missed the announcement of. One small request per peer per 30 s.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_secs(30);
/// Most bytes of downloaded blocks waiting for import (the default of `window_bytes`): the
/// window in blocks alone would allow 1,024 blocks of 1 MiB.
pub const DEFAULT_WINDOW_BYTES: usize = 256 * 1024 * 1024;
/// The span over which blocks per second are measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Granularity of the rate samples: bounds them to `RATE_WINDOW / RATE_BUCKET` entries.
const RATE_BUCKET: Duration = Duration::from_millis(500);

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
    /// Whether the block is stored (on any branch).
    fn has_block(&self, hash: &BlockHash) -> bool {
        self.header(hash).is_some()
    }
}

/// Sync settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Requests in flight per peer.
    pub max_in_flight_per_peer: usize,
    /// Blocks per `GetBlocks` (at most `MAX_BLOCKS_PER_REQUEST`).
    pub blocks_per_request: usize,
    /// How far ahead of the import point bodies are fetched (blocks).
    pub window: usize,
    /// Most bytes of downloaded blocks waiting for import.
    pub window_bytes: usize,
    /// Most validated headers held while their bodies are not yet imported (see
    /// `MAX_PENDING_HEADERS`).
    pub max_pending_headers: usize,
    /// First stall timeout for a request; doubled on each stall, reset on progress.
    pub initial_stall_timeout: Duration,
    /// Cap of the stall timeout.
    pub max_stall_timeout: Duration,
    /// Consecutive stalls after which a peer is disconnected (rotated out).
    pub max_stalls: u32,
    /// How often every peer is asked for its status.
    pub status_poll_interval: Duration,
    /// Capabilities announced in our status requests.
    pub capabilities: Capabilities,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_in_flight_per_peer: 2,
            blocks_per_request: MAX_BLOCKS_PER_REQUEST,
            window: 1_024,
            window_bytes: DEFAULT_WINDOW_BYTES,
            max_pending_headers: MAX_PENDING_HEADERS,
            initial_stall_timeout: INITIAL_STALL_TIMEOUT,
            max_stall_timeout: MAX_STALL_TIMEOUT,
            max_stalls: 3,
            status_poll_interval: STATUS_POLL_INTERVAL,
            capabilities: Capabilities::NONE,
        }
    }
}

/// Identifies one request the scheduler asked the adapter to send; the adapter hands it back
/// with the reply (`on_response`) or the failure (`on_request_failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction<P> {
    /// Send a request; give `id` back with its reply or failure.
    Request {
        /// To whom.
        peer: P,
        /// Which request this is.
        id: RequestId,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    /// No peer has told us its chain yet.
    Idle,
    /// Downloading (and checking) headers.
    Headers,
    /// Downloading and importing bodies.
    Blocks,
    /// No peer has a better chain than ours.
    Synced,
}

impl SyncState {
    /// The name shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Idle => "idle",
            SyncState::Headers => "headers",
            SyncState::Blocks => "blocks",
            SyncState::Synced => "synced",
        }
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress, for the handle, the API and the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SyncProgress {
    /// State.
    pub state: SyncState,
    /// Height of the chain being synced to (our height when not syncing).
    pub target_height: Height,
    /// Our height.
    pub height: Height,
    /// Blocks handed to import since the scheduler started.
    pub imported: u64,
    /// Blocks per second over the last `RATE_WINDOW`.
    pub blocks_per_sec: f64,
    /// Estimated seconds to reach the target, while syncing at a known rate.
    pub eta_secs: Option<f64>,
}

/// Counters for the node's metrics (never rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncMetrics {
    /// Requests handed to the adapter.
    pub requests: u64,
    /// Headers received and validated.
    pub headers_validated: u64,
    /// Headers validated in presync and not kept (a long chain not yet heavier than ours).
    pub headers_counted: u64,
    /// Blocks received that matched their header.
    pub blocks_received: u64,
    /// Requests that timed out or failed.
    pub stalls: u64,
    /// `Busy` replies.
    pub busy: u64,
    /// Cross-checks of a header chain against a second peer.
    pub cross_checks: u64,
    /// Cross-checks where the second peer had another valid branch.
    pub cross_check_mismatches: u64,
}

/// A chain tip a peer claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tip {
    hash: BlockHash,
    height: Option<Height>,
    work: Option<Work>,
}

#[derive(Debug)]
struct PeerState {
    tip: Option<Tip>,
    stall_timeout: Duration,
    /// Consecutive stalls (reset when it delivers).
    stalls: u32,
    busy_until: Option<Instant>,
    busy_streak: u32,
}

impl PeerState {
    fn is_busy(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|t| t > now)
    }
}

#[derive(Debug)]
enum Kind {
    Status,
    /// Headers of the chain being synced, from its source.
    Headers {
        chain: u64,
        max: usize,
    },
    /// Headers from a second peer, to cross-check the chain.
    Witness {
        chain: u64,
        anchor: BlockHash,
    },
    Blocks {
        chain: u64,
        hashes: Vec<BlockHash>,
    },
}

#[derive(Debug)]
struct InFlight<P> {
    peer: P,
    kind: Kind,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Witness<P> {
    /// Not cross-checked yet.
    Unchecked,
    /// Waiting for a second peer's headers.
    Waiting(P),
    /// Cross-checked, or nobody else claims the tip.
    Done,
}

/// The candidate chain being synced: validated headers above a block we have.
#[derive(Debug)]
struct HeaderChain<P> {
    /// Sequence number: replies to requests of an earlier chain are ignored.
    seq: u64,
    source: P,
    /// The tip the source claimed when we started.
    target: Tip,
    /// Header of the stored block below the first queued one.
    anchor: BlockHeader,
    /// Cumulative work at `anchor`.
    anchor_work: Work,
    headers: VecDeque<(BlockHash, BlockHeader)>,
    /// Tx roots of the queued headers, to check bodies against.
    roots: HashMap<BlockHash, Hash32>,
    /// The last validated header (the back of the queue, or past it while counting).
    last: BlockHeader,
    /// Cumulative work at `last`.
    work: Work,
    /// The fork point is known (the first reply arrived).
    located: bool,
    /// Presync: headers are validated and counted but not kept.
    counting: bool,
    /// After presync: the header at this height must have this hash on the fetch again.
    verify: Option<(Height, BlockHash)>,
    /// The chain beats ours (or ties it on another branch): bodies may be fetched.
    proven: bool,
    /// The source has no more headers after `last`.
    complete: bool,
    /// A headers request is outstanding.
    fetching: bool,
    witness: Witness<P>,
    witness_tried: HashSet<P>,
    /// Peers that did not have bodies of this chain.
    lacking: HashSet<P>,
}

impl<P: PeerKey> HeaderChain<P> {
    fn push(&mut self, hash: BlockHash, header: BlockHeader) {
        self.roots.insert(hash, header.tx_root);
        self.headers.push_back((hash, header));
    }

    /// Every header was handed to import and the source has no more.
    fn finished(&self) -> bool {
        self.headers.is_empty() && self.complete && !self.counting
    }

    fn clear_queue(&mut self) {
        self.headers.clear();
        self.roots.clear();
    }
}

/// The sync client.
///
/// Peer keys come from the adapter's connection manager, whose connection limit bounds every
/// per-peer map here; the action queue holds what one call produced and the adapter drains it
/// after each call.
#[derive(Debug)]
pub struct SyncScheduler<P: PeerKey> {
    config: SyncConfig,
    peers: BTreeMap<P, PeerState>,
    in_flight: BTreeMap<RequestId, InFlight<P>>,
    next_id: u64,
    chain: Option<HeaderChain<P>>,
    chain_seq: u64,
    /// Bodies requested and not yet delivered, by the request asking for them.
    requested: HashMap<BlockHash, RequestId>,
    downloaded: HashMap<BlockHash, (Block, P)>,
    downloaded_bytes: usize,
    actions: VecDeque<SyncAction<P>>,
    /// Peers whose chain proved no better than ours; not asked again until their tip changes.
    exhausted: HashSet<P>,
    next_check: Option<Instant>,
    /// Re-evaluate at this time (after a finished chain is imported).
    wake_at: Option<Instant>,
    imported: u64,
    /// When the current catch-up started.
    session_start: Option<Instant>,
    rate_samples: VecDeque<(Instant, u64)>,
    metrics: SyncMetrics,
}

impl<P: PeerKey> SyncScheduler<P> {
    /// A new scheduler. It needs nothing from before a restart: it starts from the host's stored
    /// tip and locator.
    pub fn new(config: SyncConfig) -> Self {
        SyncScheduler {
            config,
            peers: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            next_id: 0,
            chain: None,
            chain_seq: 0,
            requested: HashMap::new(),
            downloaded: HashMap::new(),
            downloaded_bytes: 0,
            actions: VecDeque::new(),
            exhausted: HashSet::new(),
            next_check: None,
            wake_at: None,
            imported: 0,
            session_start: None,
            rate_samples: VecDeque::new(),
            metrics: SyncMetrics::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// Counters for metrics.
    pub fn metrics(&self) -> SyncMetrics {
        self.metrics
    }

    /// A peer connected; its status follows (`on_status`).
    pub fn add_peer(&mut self, peer: P) {
        let timeout = self.config.initial_stall_timeout;
        self.peers.entry(peer).or_insert(PeerState {
            tip: None,
            stall_timeout: timeout,
            stalls: 0,
            busy_until: None,
            busy_streak: 0,
        });
    }

    /// A peer left: its requests go to others.
    pub fn remove_peer(&mut self, now: Instant, peer: &P, host: &impl SyncHost) {
        self.forget_peer(peer);
        self.pump(now, host);
    }

    fn forget_peer(&mut self, peer: &P) {
        self.peers.remove(peer);
        self.exhausted.remove(peer);
        let ids: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, r)| r.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(r) = self.in_flight.remove(&id) {
                self.release(id, r);
            }
        }
        if self.chain.as_ref().is_some_and(|c| c.source == *peer) {
            self.drop_chain();
        }
        if let Some(c) = self.chain.as_mut() {
            c.lacking.remove(peer);
            c.witness_tried.remove(peer);
        }
    }

    /// Validated headers held in memory, waiting for their bodies (bounded by
    /// `max_pending_headers`).
    pub fn pending_headers(&self) -> usize {
        self.chain.as_ref().map_or(0, |c| c.headers.len())
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<SyncAction<P>> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight
            .values()
            .map(|r| r.deadline)
            .chain(self.peers.values().filter_map(|p| p.busy_until))
            .chain(self.next_check)
            .chain(self.wake_at)
            .min()
    }

    /// Our status, to send a new peer (and in the periodic status poll).
    pub fn status_request(host: &impl SyncHost, capabilities: Capabilities) -> Status {
        let (best_hash, best_height, cumulative_work) = host.tip();
        Status {
            genesis: host.genesis(),
            best_hash,
            best_height,
            cumulative_work,
            capabilities,
        }
    }

    /// A peer told us its status (handshake, its reply to our status poll, or a push). A
    /// different genesis disconnects it without penalty.
    pub fn on_status(&mut self, now: Instant, peer: P, status: Status, host: &impl SyncHost) {
        if status.genesis != host.genesis() {
            // Another network: not malice.
            self.forget_peer(&peer);
            self.actions.push_back(SyncAction::Disconnect {
                peer,
                penalize: false,
            });
            self.pump(now, host);
            return;
        }
        self.set_tip(
            peer,
            Tip {
                hash: status.best_hash,
                height: Some(status.best_height),
                work: Some(status.cumulative_work),
            },
        );
        self.pump(now, host);
    }

    /// A peer announced a block with its height and cumulative work (a header announcement or
    /// a status push): if it is more work than ours, sync toward it.
    pub fn on_announced(
        &mut self,
        now: Instant,
        peer: P,
        hash: BlockHash,
        height: Height,
        work: Work,
        host: &impl SyncHost,
    ) {
        let old = self.peers.get(&peer).and_then(|p| p.tip);
        let keep_old = old.is_some_and(|t| {
            t.work.is_some_and(|w| w > work) && !host.has_block(&t.hash) && t.hash != hash
        });
        if !keep_old {
            self.set_tip(
                peer,
                Tip {
                    hash,
                    height: Some(height),
                    work: Some(work),
                },
            );
        }
        self.pump(now, host);
    }

    /// A block from `peer` could not be connected: we lack its parent (the relay engine's
    /// `MissingParent` event). Its work is unknown, so its headers are fetched to find out.
    pub fn on_orphan(&mut self, now: Instant, peer: P, hash: BlockHash, host: &impl SyncHost) {
        if host.has_block(&hash) {
            return;
        }
        let old = self.peers.get(&peer).and_then(|p| p.tip);
        // A tip of known work we have not got yet is the better lead; keep it.
        let keep_old = old.is_some_and(|t| t.work.is_some() && !host.has_block(&t.hash));
        if !keep_old {
            self.set_tip(
                peer,
                Tip {
                    hash,
                    height: None,
                    work: None,
                },
            );
        }
        self.pump(now, host);
    }

    fn set_tip(&mut self, peer: P, tip: Tip) {
        self.add_peer(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.tip.map(|t| t.hash) != Some(tip.hash) {
            self.exhausted.remove(&peer);
        }
        p.tip = Some(tip);
    }

    /// The progress of sync.
    pub fn progress(&self, now: Instant, host: &impl SyncHost) -> SyncProgress {
        let (_, height, _) = host.tip();
        let (state, target_height) = match &self.chain {
            Some(c) => {
                let state = if c.proven && c.witness == Witness::Done {
                    SyncState::Blocks
                } else {
                    SyncState::Headers
                };
                let target = c.target.height.unwrap_or(Height(0)).max(c.last.height);
                (state, target.max(height))
            }
            None if self.peers.values().all(|p| p.tip.is_none()) => (SyncState::Idle, height),
            None => (SyncState::Synced, height),
        };
        let span = self.session_start.map_or(RATE_WINDOW, |s| {
            now.saturating_duration_since(s).min(RATE_WINDOW)
        });
        let recent: u64 = self
            .rate_samples
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        let blocks_per_sec = if span.is_zero() {
            0.0
        } else {
            recent as f64 / span.as_secs_f64()
        };
        let remaining = target_height.0.saturating_sub(height.0) as f64;
        let syncing = matches!(state, SyncState::Headers | SyncState::Blocks);
        SyncProgress {
            state,
            target_height,
            height,
            imported: self.imported,
            blocks_per_sec,
            eta_secs: (syncing && blocks_per_sec > 0.0).then(|| remaining / blocks_per_sec),
        }
    }

    fn drop_chain(&mut self) {
        self.chain = None;
        self.requested.clear();
        self.downloaded.clear();
        self.downloaded_bytes = 0;
    }

    /// Gives up on the current chain: `penalty` for its source if it misbehaved; the source is
    /// not asked again until its tip changes.
    fn reject_chain(&mut self, penalty: Option<Reason>) {
        let Some(c) = self.chain.as_ref() else {
            return;
        };
        let source = c.source;
        if let Some(reason) = penalty {
            self.penalize(source, reason);
        }
        self.exhausted.insert(source);
        self.drop_chain();
    }

    /// Starts a chain if a peer has a better one, then keeps headers and bodies flowing.
    fn pump(&mut self, now: Instant, host: &impl SyncHost) {
        if self.next_check.is_none() {
            self.next_check = Some(now + self.config.status_poll_interval);
        }
        let (_, _, our_work) = host.tip();
        if self
            .chain
            .as_ref()
            .is_some_and(|c| c.finished() || (c.complete && c.work < our_work))
        {
            // Done with it, or our chain moved past it meanwhile (blocks from elsewhere).
            self.drop_chain();
        }
        if self.chain.is_none() {
            self.start_chain(now, host);
        }
        self.fetch_headers(now, host);
        self.check_witness(now);
        self.request_bodies(now, host);
    }

    fn start_chain(&mut self, now: Instant, host: &impl SyncHost) {
        let (tip, _, our_work) = host.tip();
        let best = self
            .peers
            .iter()
            .filter(|(k, _)| !self.exhausted.contains(k))
            .filter_map(|(k, p)| p.tip.map(|t| (*k, t)))
            .filter(|(_, t)| t.hash != tip && !host.has_block(&t.hash))
            .filter_map(|(k, t)| {
                // More work first, then equal work on another branch (the chain's fork choice
                // decides), then unknown work (an orphan's branch).
                let rank = match t.work {
                    Some(w) if w > our_work => 2,
                    Some(w) if w == our_work => 1,
                    Some(_) => return None,
                    None => 0,
                };
                Some(((rank, t.work, t.height, Reverse(k)), k, t))
            })
            .max_by_key(|(key, ..)| *key);
        let Some((_, peer, target)) = best else {
            self.session_start = None;
            return;
        };
        let Some(anchor) = host.header(&tip) else {
            return;
        };
        self.session_start.get_or_insert(now);
        self.chain_seq += 1;
        self.chain = Some(HeaderChain {
            seq: self.chain_seq,
            source: peer,
            target,
            last: anchor.clone(),
            anchor,
            anchor_work: our_work,
            headers: VecDeque::new(),
            roots: HashMap::new(),
            work: our_work,
            located: false,
            counting: false,
            verify: None,
            proven: false,
            complete: false,
            fetching: false,
            witness: Witness::Unchecked,
            witness_tried: HashSet::new(),
            lacking: HashSet::new(),
        });
    }

    fn peer_load(&self, peer: &P) -> usize {
        self.in_flight.values().filter(|r| r.peer == *peer).count()
    }

    fn can_ask(&self, now: Instant, peer: &P) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.is_busy(now))
            && self.peer_load(peer) < self.config.max_in_flight_per_peer.max(1)
    }

    fn send(
        &mut self,
        now: Instant,
        peer: P,
        kind: Kind,
        request: SyncRequest,
    ) -> Option<RequestId> {
        let p = self.peers.get(&peer)?;
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.in_flight.insert(
            id,
            InFlight {
                peer,
                kind,
                deadline: now + p.stall_timeout,
            },
        );
        self.metrics.requests += 1;
        self.actions
            .push_back(SyncAction::Request { peer, id, request });
        Some(id)
    }

    fn fetch_headers(&mut self, now: Instant, host: &impl SyncHost) {
        let max_pending = self.config.max_pending_headers.max(1);
        let Some(c) = self.chain.as_mut() else {
            return;
        };
        if c.complete || c.fetching {
            return;
        }
        if c.proven && c.headers.len() > max_pending / 2 {
            // Enough queued; more once bodies drain the queue.
            return;
        }
        if !c.proven && !c.counting && c.headers.len() >= max_pending {
            // The queue is full and the chain is not yet heavier than ours: count the rest
            // without keeping it (presync).
            c.clear_queue();
            c.counting = true;
        }
        let source = c.source;
        if !self.can_ask(now, &source) {
            return;
        }
        let c = self.chain.as_mut().expect("chain checked above");
        let mut locator = if c.located {
            let mut l = vec![c.last.hash()];
            l.extend(host.locator());
            l
        } else {
            host.locator()
        };
        if locator.len() > MAX_LOCATOR_LEN {
            // Keep the last entry (genesis): every peer of our network knows it.
            let last = locator.pop();
            locator.truncate(MAX_LOCATOR_LEN - 1);
            locator.extend(last);
        }
        let room = if c.counting {
            MAX_HEADERS_PER_REQUEST as usize
        } else {
            max_pending - c.headers.len()
        };
        let max = room.clamp(1, MAX_HEADERS_PER_REQUEST as usize);
        c.fetching = true;
        let chain = c.seq;
        let _ = self.send(
            now,
            source,
            Kind::Headers { chain, max },
            SyncRequest::GetHeaders {
                locator,
                max: max as u32,
            },
        );
    }

    /// Before fetching bodies of a chain learned from one peer, asks a second peer that claims
    /// the same tip for the headers after the fork point.
    fn check_witness(&mut self, now: Instant) {
        let Some(c) = self.chain.as_ref() else {
            return;
        };
        if !c.proven || c.headers.is_empty() || c.witness != Witness::Unchecked {
            return;
        }
        let claims = |t: &Tip| t.hash == c.target.hash || c.roots.contains_key(&t.hash);
        let candidates: Vec<P> = self
            .peers
            .iter()
            .filter(|(k, p)| {
                **k != c.source
                    && !self.exhausted.contains(k)
                    && !c.witness_tried.contains(k)
                    && p.tip.as_ref().is_some_and(claims)
            })
            .map(|(k, _)| *k)
            .collect();
        let Some(witness) = candidates
            .iter()
            .copied()
            .filter(|k| self.can_ask(now, k))
            .min_by_key(|k| (self.peers.get(k).map_or(0, |p| p.stalls), *k))
        else {
            if candidates.is_empty() {
                // Nobody else claims it: adopt it unconfirmed.
                if let Some(c) = self.chain.as_mut() {
                    c.witness = Witness::Done;
                }
            }
            // Otherwise every witness is busy: wait for one (poll_timeout covers it).
            return;
        };
        let anchor = c.anchor.hash();
        let max = c.headers.len().min(MAX_HEADERS_PER_REQUEST as usize);
        let chain = c.seq;
        if let Some(c) = self.chain.as_mut() {
            c.witness = Witness::Waiting(witness);
        }
        self.metrics.cross_checks += 1;
        let _ = self.send(
            now,
            witness,
            Kind::Witness { chain, anchor },
            SyncRequest::GetHeaders {
                locator: vec![anchor],
                max: max as u32,
            },
        );
    }

    /// Handles a reply to request `id` from `peer`. Replies to requests that already timed out
    /// (or were never made) are ignored.
    pub fn on_response(
        &mut self,
        now: Instant,
        peer: P,
        id: RequestId,
        response: SyncResponse,
        host: &impl SyncHost,
    ) {
        let Some(request) = self.in_flight.remove(&id) else {
            return;
        };
        if request.peer != peer {
            // The adapter mixed up peers; keep the request for its real peer.
            self.in_flight.insert(id, request);
            return;
        }
        match (request.kind, response) {
            (kind, SyncResponse::Busy { retry_after_ms }) => {
                self.release_kind(peer, kind);
                self.on_busy(now, peer, Duration::from_millis(retry_after_ms.into()));
            }
            (Kind::Status, SyncResponse::Status(s)) => return self.on_status(now, peer, s, host),
            (Kind::Headers { chain, max }, SyncResponse::Headers(h)) => {
                self.on_chain_headers(now, peer, chain, max, h, host)
            }
            (Kind::Witness { chain, anchor }, SyncResponse::Headers(h)) => {
                self.on_witness_headers(peer, chain, anchor, h, host)
            }
            (Kind::Blocks { chain, hashes }, SyncResponse::Blocks(b)) => {
                self.on_blocks(peer, chain, hashes, b)
            }
            (kind, _) => {
                // A reply of the wrong kind.
                self.release_kind(peer, kind);
                self.penalize(peer, Reason::Relay(Offence::MalformedReply));
            }
        }
        self.pump(now, host);
    }

    /// Request `id` to `peer` failed without a reply (stream reset, transport timeout): its work
    /// goes to other peers and it counts as a stall. A closed connection is `remove_peer`.
    pub fn on_request_failed(
        &mut self,
        now: Instant,
        peer: P,
        id: RequestId,
        host: &impl SyncHost,
    ) {
        let Some(request) = self.in_flight.remove(&id) else {
            return;
        };
        if request.peer != peer {
            self.in_flight.insert(id, request);
            return;
        }
        let status = matches!(request.kind, Kind::Status);
        self.release(id, request);
        if !status {
            self.stall(peer);
        }
        self.pump(now, host);
    }

    /// Undoes the bookkeeping of a request that will deliver nothing.
    fn release(&mut self, id: RequestId, request: InFlight<P>) {
        if let Kind::Blocks { hashes, .. } = &request.kind {
            for h in hashes {
                if self.requested.get(h) == Some(&id) {
                    self.requested.remove(h);
                }
            }
        }
        self.release_kind(request.peer, request.kind);
    }

    fn release_kind(&mut self, peer: P, kind: Kind) {
        let Some(c) = self.chain.as_mut() else {
            return;
        };
        match kind {
            Kind::Status => {}
            Kind::Headers { chain, .. } => {
                if chain == c.seq {
                    c.fetching = false;
                }
            }
            Kind::Witness { chain, .. } => {
                if chain == c.seq && c.witness == Witness::Waiting(peer) {
                    c.witness = Witness::Unchecked;
                    c.witness_tried.insert(peer);
                }
            }
            Kind::Blocks { hashes, .. } => {
                for h in hashes {
                    if self
                        .requested
                        .get(&h)
                        .and_then(|id| self.in_flight.get(id))
                        .is_none()
                    {
                        self.requested.remove(&h);
                    }
                }
            }
        }
    }

    fn on_busy(&mut self, now: Instant, peer: P, retry_after: Duration) {
        self.metrics.busy += 1;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.busy_until = Some(now + retry_after.clamp(Duration::from_millis(1), MAX_BUSY_BACKOFF));
        p.busy_streak += 1;
        if p.busy_streak >= MAX_BUSY_STREAK {
            p.busy_streak = 0;
            self.stall(peer);
        }
    }

    fn penalize(&mut self, peer: P, reason: Reason) {
        self.actions
            .push_back(SyncAction::Penalize { peer, reason });
    }

    /// A request of `peer` delivered nothing in time: penalise, back off, rotate it out after
    /// `max_stalls` in a row.
    fn stall(&mut self, peer: P) {
        self.metrics.stalls += 1;
        let max = self.config.max_stall_timeout;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.stalls += 1;
        p.stall_timeout = (p.stall_timeout * 2).min(max);
        let rotate = p.stalls >= self.config.max_stalls;
        self.penalize(peer, Reason::Stalled);
        if rotate {
            self.forget_peer(&peer);
            self.actions.push_back(SyncAction::Disconnect {
                peer,
                penalize: true,
            });
        }
    }

    fn on_chain_headers(
        &mut self,
        now: Instant,
        peer: P,
        seq: u64,
        max: usize,
        mut headers: Vec<BlockHeader>,
        host: &impl SyncHost,
    ) {
        let Some(c) = self.chain.as_mut().filter(|c| c.seq == seq) else {
            return;
        };
        c.fetching = false;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stall_timeout = self.config.initial_stall_timeout;
            p.busy_streak = 0;
        }
        if headers.len() > max {
            // More than asked for: a broken or hostile peer. Keep what was asked.
            headers.truncate(max);
            self.penalize(peer, Reason::Relay(Offence::MalformedReply));
        }
        let c = self.chain.as_mut().expect("chain checked above");
        let full = headers.len() >= max;
        let (our_tip, _, our_work) = host.tip();
        if let Some(first) = headers.first() {
            if !c.located {
                // The first header's parent is the fork point: a block we have.
                let Some(parent) = host.header(&first.parent) else {
                    return self.reject_chain(Some(Reason::InvalidHeaders));
                };
                c.anchor_work = host.work_of(&first.parent).unwrap_or(Work(0));
                c.work = c.anchor_work;
                c.anchor = parent.clone();
                c.last = parent;
                c.located = true;
            } else if first.parent != c.last.hash() {
                if host.has_block(&first.parent) || c.roots.contains_key(&first.parent) {
                    // Its best chain moved under us (a reorg on its side): start over once its
                    // status changes; ask for it now.
                    self.reject_chain(None);
                    self.poll_status(now, peer, host);
                } else {
                    self.reject_chain(Some(Reason::InvalidHeaders));
                }
                return;
            }
        }
        let max_pending = self.config.max_pending_headers.max(1);
        let mut restarted = false;
        let mut capped = false;
        for header in headers {
            let c = self.chain.as_mut().expect("chain checked above");
            let hash = header.hash();
            let work = if header.parent == c.last.hash() {
                host.check_header(&header, &c.last)
            } else {
                None
            };
            let Some(work) = work else {
                return self.reject_chain(Some(Reason::InvalidHeaders));
            };
            if c.verify
                .is_some_and(|(h, v)| header.height == h && hash != v)
            {
                // Not the chain it showed us in presync: start over once its status changes.
                self.reject_chain(None);
                self.poll_status(now, peer, host);
                return;
            }
            self.metrics.headers_validated += 1;
            if c.counting {
                self.metrics.headers_counted += 1;
            } else if c.headers.len() >= max_pending {
                // Bounded: the rest is fetched again once bodies drain the queue.
                capped = true;
                break;
            } else {
                c.push(hash, header.clone());
            }
            c.work = c.work.saturating_add(work);
            let height = header.height;
            c.last = header;
            if !c.proven && c.work > our_work {
                c.proven = true;
                if c.counting {
                    // Heavier than ours, proven without keeping the headers: fetch them again
                    // from the fork point, checking we get the same chain.
                    c.verify = Some((height, hash));
                    c.counting = false;
                    c.clear_queue();
                    c.last = c.anchor.clone();
                    c.work = c.anchor_work;
                    restarted = true;
                    break;
                }
            }
        }
        let c = self.chain.as_mut().expect("chain checked above");
        if restarted {
            return;
        }
        c.complete = !full && !capped;
        if c.complete && !c.proven {
            if !c.counting
                && !c.headers.is_empty()
                && c.work == our_work
                && c.last.hash() != our_tip
            {
                // Equal work on another branch: fetch it and let the chain's fork choice decide.
                c.proven = true;
            } else {
                // Not better than ours (it claimed more than it has, or we caught up meanwhile).
                self.reject_chain(None);
            }
        }
    }

    fn on_witness_headers(
        &mut self,
        peer: P,
        seq: u64,
        anchor: BlockHash,
        headers: Vec<BlockHeader>,
        host: &impl SyncHost,
    ) {
        let Some(c) = self
            .chain
            .as_mut()
            .filter(|c| c.seq == seq && c.witness == Witness::Waiting(peer))
        else {
            return;
        };
        c.witness = Witness::Unchecked;
        c.witness_tried.insert(peer);
        // Whether its best chain passes through our fork point (asked for the headers after it).
        let through_anchor = headers.first().is_some_and(|h| h.parent == anchor);
        // Headers we store tell where its chain runs (from genesis if it lacks the fork point).
        let new: Vec<BlockHeader> = headers
            .into_iter()
            .skip_while(|h| host.has_block(&h.hash()))
            .collect();
        let Some(first) = new.first() else {
            // It claims the tip but shows nothing new: no opinion.
            return;
        };
        let Some(mut parent) = host.header(&first.parent) else {
            self.penalize(peer, Reason::InvalidHeaders);
            self.exhausted.insert(peer);
            return;
        };
        for h in &new {
            if h.parent != parent.hash() || host.check_header(h, &parent).is_none() {
                self.penalize(peer, Reason::InvalidHeaders);
                self.exhausted.insert(peer);
                return;
            }
            parent = h.clone();
        }
        let c = self.chain.as_mut().expect("chain checked above");
        let front = c.headers.front().map(|(_, h)| h.height.0);
        let agrees = through_anchor
            && new.iter().all(|h| {
                let Some(i) = front.and_then(|f| h.height.0.checked_sub(f)) else {
                    // Below the queue: already imported or stored.
                    return true;
                };
                match c.headers.get(i as usize) {
                    Some((hash, _)) => *hash == h.hash(),
                    None => true,
                }
            });
        if agrees {
            c.witness = Witness::Done;
        } else {
            // Two peers claim the same tip with different valid branches: this one is not the
            // branch to that tip. Fetch the witness's branch instead; the chain's fork choice
            // settles it if both get imported. Valid data is not penalised.
            self.metrics.cross_check_mismatches += 1;
            self.reject_chain(None);
        }
    }

    fn request_bodies(&mut self, now: Instant, host: &impl SyncHost) {
        let Some(c) = self.chain.as_ref() else {
            return;
        };
        if !c.proven || c.witness != Witness::Done {
            return;
        }
        let (_, our_height, our_work) = host.tip();
        if c.complete && c.work < our_work {
            // Our chain moved past it meanwhile.
            return;
        }
        if self.downloaded_bytes >= self.config.window_bytes {
            // Enough waiting for import. What is in flight may overshoot by at most
            // peers × max_in_flight_per_peer × MAX_BLOCKS_REPLY_BYTES.
            return;
        }
        let per_request = self
            .config
            .blocks_per_request
            .clamp(1, MAX_BLOCKS_PER_REQUEST);
        let max_in_flight = self.config.max_in_flight_per_peer.max(1);
        let mut load: HashMap<P, usize> = HashMap::new();
        for r in self.in_flight.values() {
            *load.entry(r.peer).or_default() += 1;
        }
        let eligible = |k: &P, p: &PeerState, height: Height| {
            !p.is_busy(now)
                && !c.lacking.contains(k)
                && !self.exhausted.contains(k)
                && (*k == c.source
                    || p.tip.is_some_and(|t| {
                        t.hash == c.target.hash
                            || t.height.is_some_and(|h| h >= height)
                            || c.roots.contains_key(&t.hash)
                    }))
        };
        let mut batches: Vec<(P, Vec<BlockHash>)> = Vec::new();
        let mut batch: Vec<BlockHash> = Vec::new();
        let mut batch_height = Height(0);
        let mut assign = |batch: &mut Vec<BlockHash>, height: Height| -> bool {
            let peer = self
                .peers
                .iter()
                .filter(|(k, p)| {
                    load.get(k).copied().unwrap_or(0) < max_in_flight && eligible(k, p, height)
                })
                .min_by_key(|(k, p)| (p.stalls, load.get(k).copied().unwrap_or(0), **k))
                .map(|(k, _)| *k);
            match peer {
                Some(peer) => {
                    *load.entry(peer).or_default() += 1;
                    batches.push((peer, std::mem::take(batch)));
                    true
                }
                None => false,
            }
        };
        for (hash, header) in c.headers.iter().take(self.config.window) {
            if self.requested.contains_key(hash)
                || self.downloaded.contains_key(hash)
                || (header.height <= our_height && host.has_block(hash))
            {
                continue;
            }
            batch.push(*hash);
            batch_height = header.height;
            if batch.len() >= per_request && !assign(&mut batch, batch_height) {
                batch.clear();
                break;
            }
        }
        if !batch.is_empty() && !assign(&mut batch, batch_height) {
            batch.clear();
        }
        let seq = c.seq;
        for (peer, hashes) in batches {
            let kind = Kind::Blocks {
                chain: seq,
                hashes: hashes.clone(),
            };
            if let Some(id) = self.send(now, peer, kind, SyncRequest::GetBlocks(hashes.clone())) {
                for h in hashes {
                    self.requested.insert(h, id);
                }
            }
        }
    }

    fn on_blocks(&mut self, peer: P, seq: u64, hashes: Vec<BlockHash>, blocks: Vec<Block>) {
        let mut delivered = Vec::new();
        let mut unrequested = false;
        let mut forged = false;
        if let Some(c) = self.chain.as_ref().filter(|c| c.seq == seq) {
            for block in blocks {
                let hash = block.hash();
                let Some(pos) = hashes.iter().position(|h| *h == hash) else {
                    unrequested = true;
                    continue;
                };
                let Some(root) = c.roots.get(&hash) else {
                    // Already imported, or dropped from the queue: nothing to do with it.
                    delivered.push(pos);
                    continue;
                };
                if merkle_root(&block.tx_ids()) != *root {
                    // A body that does not match its header: the peer made it up.
                    forged = true;
                    continue;
                }
                delivered.push(pos);
                if self.downloaded.contains_key(&hash) {
                    continue;
                }
                self.metrics.blocks_received += 1;
                self.downloaded_bytes += playergold_primitives::codec::encoded_len(&block);
                self.downloaded.insert(hash, (block, peer));
            }
        }
        if unrequested {
            self.penalize(peer, Reason::Relay(Offence::Unrequested));
        }
        if forged {
            self.penalize(peer, Reason::InvalidBlock);
        }
        // This request is answered: its hashes are no longer requested (delivered ones are in
        // `downloaded`, the rest go back to the pool).
        for h in &hashes {
            if self
                .requested
                .get(h)
                .is_some_and(|id| !self.in_flight.contains_key(id))
            {
                self.requested.remove(h);
            }
        }
        // Replies come in request order, cut short by the byte limit. A gap before the last
        // delivered block, or nothing at all, means the peer lacks this chain's bodies.
        let last = delivered.iter().max().copied();
        let lacks = match last {
            None => !hashes.is_empty(),
            Some(last) => (0..last).any(|i| !delivered.contains(&i)),
        };
        if !delivered.is_empty()
            && let Some(p) = self.peers.get_mut(&peer)
        {
            p.stall_timeout = self.config.initial_stall_timeout;
            p.stalls = 0;
            p.busy_streak = 0;
        }
        if lacks && let Some(c) = self.chain.as_mut().filter(|c| c.seq == seq) {
            if c.source == peer {
                // It sent us the headers and withholds their bodies.
                self.reject_chain(Some(Reason::Stalled));
            } else {
                c.lacking.insert(peer);
            }
        }
    }

    /// Blocks ready for import, in chain order, with the peer that delivered each. The adapter
    /// imports them (one batch) before its next call into the scheduler.
    pub fn take_ready(&mut self, now: Instant, host: &impl SyncHost) -> Vec<(Block, P)> {
        let mut out = Vec::new();
        let (_, our_height, _) = host.tip();
        let Some(c) = self.chain.as_mut() else {
            return out;
        };
        // Nothing leaves the queue before the cross-check: it compares against the queue.
        while c.witness == Witness::Done
            && let Some((hash, header)) = c.headers.front()
        {
            if let Some(entry) = self.downloaded.remove(hash) {
                self.downloaded_bytes = self
                    .downloaded_bytes
                    .saturating_sub(playergold_primitives::codec::encoded_len(&entry.0));
                out.push(entry);
            } else if !(header.height <= our_height && host.has_block(hash)) {
                break;
            }
            if let Some((hash, header)) = c.headers.pop_front() {
                c.roots.remove(&hash);
                c.anchor = header;
            }
        }
        let done = c.finished();
        if !out.is_empty() {
            self.imported += out.len() as u64;
            match self.rate_samples.back_mut() {
                Some((t, n)) if now.saturating_duration_since(*t) < RATE_BUCKET => {
                    *n += out.len() as u64
                }
                _ => self.rate_samples.push_back((now, out.len() as u64)),
            }
            while self
                .rate_samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW)
            {
                self.rate_samples.pop_front();
            }
        }
        if done {
            // Finished this chain. What is next is decided once the adapter has imported these
            // (our tip changes): at the next call, which `poll_timeout` asks for right away.
            self.wake_at = Some(now);
        } else {
            self.fetch_headers(now, host);
            self.request_bodies(now, host);
        }
        out
    }

    /// The chain refused a block that `peer` delivered: penalise it, and drop the chain (the
    /// source that sent its headers is not asked again until its tip changes).
    pub fn on_invalid_block(&mut self, now: Instant, peer: P, host: &impl SyncHost) {
        self.penalize(peer, Reason::InvalidBlock);
        self.exhausted.insert(peer);
        self.reject_chain(None);
        self.pump(now, host);
    }

    /// The chain could not store blocks from `take_ready` through nobody's fault (our store
    /// failed, or a block is from the near future): the current chain is dropped without a
    /// penalty and sync starts again from what the host has stored. Without this, the blocks
    /// after the failed one would be handed out with their parent missing.
    pub fn on_import_failed(&mut self, now: Instant, host: &impl SyncHost) {
        self.drop_chain();
        self.pump(now, host);
    }

    /// Stalled requests (penalise, back off, hand the work to other peers), the periodic status
    /// poll, and whatever else is due.
    pub fn handle_timeout(&mut self, now: Instant, host: &impl SyncHost) {
        if self.wake_at.is_some_and(|t| t <= now) {
            self.wake_at = None;
        }
        let expired: Vec<RequestId> = self
            .in_flight
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut stalled: Vec<P> = Vec::new();
        for id in expired {
            let Some(r) = self.in_flight.remove(&id) else {
                continue;
            };
            let peer = r.peer;
            let chain_headers = matches!(&r.kind, Kind::Headers { chain, .. }
                if self.chain.as_ref().is_some_and(|c| c.seq == *chain));
            let status = matches!(r.kind, Kind::Status);
            self.release(id, r);
            if chain_headers {
                // The source of the chain does not deliver its headers: find another.
                self.reject_chain(None);
            }
            if !status && !stalled.contains(&peer) {
                stalled.push(peer);
            }
        }
        for peer in stalled {
            self.stall(peer);
        }
        for p in self.peers.values_mut() {
            if p.busy_until.is_some_and(|t| t <= now) {
                p.busy_until = None;
            }
        }
        if self.next_check.is_some_and(|t| t <= now) {
            self.next_check = Some(now + self.config.status_poll_interval);
            let peers: Vec<P> = self.peers.keys().copied().collect();
            for peer in peers {
                self.poll_status(now, peer, host);
            }
        }
        self.pump(now, host);
    }

    /// Asks `peer` for its status unless a status request to it is outstanding.
    fn poll_status(&mut self, now: Instant, peer: P, host: &impl SyncHost) {
        let asked = self
            .in_flight
            .values()
            .any(|r| r.peer == peer && matches!(r.kind, Kind::Status));
        if asked || !self.peers.contains_key(&peer) {
            return;
        }
        let status = Self::status_request(host, self.config.capabilities);
        let _ = self.send(now, peer, Kind::Status, SyncRequest::Status(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use playergold_primitives::{Keypair, TimestampMs};

    /// A straight chain of `blocks`; the host stores the first `have` of them.
    struct Line {
        blocks: Vec<Block>,
        have: usize,
    }

    impl Line {
        fn new(len: usize, have: usize) -> Line {
            let key = Keypair::from_secret(&[9; 32]);
            let mut blocks = vec![Block::build(
                &key,
                BlockHash::ZERO,
                Height(0),
                TimestampMs(0),
                vec![],
            )];
            for i in 1..len {
                let parent = blocks[i - 1].hash();
                blocks.push(Block::build(
                    &key,
                    parent,
                    Height(i as u64),
                    TimestampMs(i as u64 * 1_000),
                    vec![],
                ));
            }
            Line { blocks, have }
        }

        /// What a peer holding the first `n` blocks says.
        fn status(&self, n: usize) -> Status {
            Status {
                genesis: self.blocks[0].hash(),
                best_hash: self.blocks[n - 1].hash(),
                best_height: Height(n as u64 - 1),
                cumulative_work: Work(n as u128 - 1),
                capabilities: Capabilities::NONE,
            }
        }

        fn headers(&self, from: usize, to: usize) -> SyncResponse {
            SyncResponse::Headers(
                self.blocks[from..to]
                    .iter()
                    .map(|b| b.header.clone())
                    .collect(),
            )
        }

        fn bodies(&self, hashes: &[BlockHash]) -> SyncResponse {
            SyncResponse::Blocks(
                hashes
                    .iter()
                    .filter_map(|h| self.blocks.iter().find(|b| b.hash() == *h).cloned())
                    .collect(),
            )
        }
    }

    impl SyncHost for Line {
        fn genesis(&self) -> BlockHash {
            self.blocks[0].hash()
        }
        fn tip(&self) -> (BlockHash, Height, Work) {
            let n = self.have - 1;
            (self.blocks[n].hash(), Height(n as u64), Work(n as u128))
        }
        fn locator(&self) -> Vec<BlockHash> {
            vec![self.tip().0, self.genesis()]
        }
        fn header(&self, hash: &BlockHash) -> Option<BlockHeader> {
            self.blocks[..self.have]
                .iter()
                .find(|b| b.hash() == *hash)
                .map(|b| b.header.clone())
        }
        fn work_of(&self, hash: &BlockHash) -> Option<Work> {
            self.blocks[..self.have]
                .iter()
                .position(|b| b.hash() == *hash)
                .map(|i| Work(i as u128))
        }
        fn check_header(&self, header: &BlockHeader, parent: &BlockHeader) -> Option<Work> {
            (header.parent == parent.hash() && header.height.0 == parent.height.0 + 1)
                .then_some(Work(1))
        }
    }

    type Sched = SyncScheduler<u8>;

    fn actions(s: &mut Sched) -> Vec<SyncAction<u8>> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn requests(actions: &[SyncAction<u8>]) -> Vec<(u8, RequestId, SyncRequest)> {
        actions
            .iter()
            .filter_map(|a| match a {
                SyncAction::Request { peer, id, request } => Some((*peer, *id, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn penalties(actions: &[SyncAction<u8>]) -> Vec<(u8, Reason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                SyncAction::Penalize { peer, reason } => Some((*peer, *reason)),
                _ => None,
            })
            .collect()
    }

    /// A scheduler at genesis whose only peer `1` delivered the headers of `line`; returns the
    /// body requests it made.
    fn after_headers(
        config: SyncConfig,
        line: &Line,
        now: Instant,
    ) -> (Sched, Vec<(u8, RequestId, SyncRequest)>) {
        let mut s = Sched::new(config);
        let len = line.blocks.len();
        s.on_status(now, 1, line.status(len), line);
        let reqs = requests(&actions(&mut s));
        let [(1, id, SyncRequest::GetHeaders { .. })] = reqs.as_slice() else {
            panic!("one headers request: {reqs:?}");
        };
        s.on_response(now, 1, *id, line.headers(1, len), line);
        let reqs = requests(&actions(&mut s));
        (s, reqs)
    }

    #[test]
    fn idle_until_a_peer_speaks_then_synced_when_nobody_is_ahead() {
        let line = Line::new(10, 10);
        let now = Instant::now();
        let mut s = Sched::new(SyncConfig::default());
        assert_eq!(s.progress(now, &line).state, SyncState::Idle);
        s.on_status(now, 1, line.status(10), &line);
        assert_eq!(s.progress(now, &line).state, SyncState::Synced);
        assert!(requests(&actions(&mut s)).is_empty());
        assert_eq!(SyncState::Synced.to_string(), "synced");
    }

    #[test]
    fn the_stall_timeout_doubles_to_its_cap_and_resets_on_progress() {
        let line = Line::new(100, 1);
        let config = SyncConfig {
            max_stall_timeout: Duration::from_secs(8),
            max_stalls: 100,
            ..sixteen_per_request()
        };
        let mut now = Instant::now();
        let (mut s, reqs) = after_headers(config, &line, now);
        assert_eq!(reqs.len(), 2, "two body requests in flight: {reqs:?}");
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(2)));
        for expect in [4, 8, 8] {
            now = s.poll_timeout().expect("a deadline");
            s.handle_timeout(now, &line);
            let acts = actions(&mut s);
            assert_eq!(
                penalties(&acts),
                vec![(1, Reason::Stalled)],
                "one per stall"
            );
            assert_eq!(requests(&acts).len(), 2, "the work is asked for again");
            assert_eq!(
                s.poll_timeout(),
                Some(now + Duration::from_secs(expect)),
                "doubled, capped"
            );
        }
        // It delivers: the timeout is back to its start.
        let (_, id, SyncRequest::GetBlocks(hashes)) = &requests_in_flight(&s)[0] else {
            panic!("blocks request");
        };
        s.on_response(now, 1, *id, line.bodies(hashes), &line);
        let acts = actions(&mut s);
        assert!(penalties(&acts).is_empty());
        assert_eq!(requests(&acts).len(), 1);
        let ready = s.take_ready(now, &line);
        assert!(!ready.is_empty());
        let newest = s.in_flight.values().next_back().expect("in flight");
        assert_eq!(newest.deadline, now + Duration::from_secs(2));
    }

    /// Requests of 16 blocks: the tests below count requests over short chains.
    fn sixteen_per_request() -> SyncConfig {
        SyncConfig {
            blocks_per_request: 16,
            ..SyncConfig::default()
        }
    }

    /// The requests in flight, rebuilt as they were sent (for answering them in tests).
    fn requests_in_flight(s: &Sched) -> Vec<(u8, RequestId, SyncRequest)> {
        s.in_flight
            .iter()
            .filter_map(|(id, r)| match &r.kind {
                Kind::Blocks { hashes, .. } => {
                    Some((r.peer, *id, SyncRequest::GetBlocks(hashes.clone())))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peer_stalling_max_stalls_times_in_a_row_is_rotated_out() {
        let line = Line::new(100, 1);
        let mut now = Instant::now();
        let (mut s, _) = after_headers(SyncConfig::default(), &line, now);
        let mut disconnects = Vec::new();
        for _ in 0..3 {
            now = s.poll_timeout().expect("a deadline");
            s.handle_timeout(now, &line);
            disconnects.extend(actions(&mut s).into_iter().filter_map(|a| match a {
                SyncAction::Disconnect { peer, penalize } => Some((peer, penalize)),
                _ => None,
            }));
        }
        assert_eq!(disconnects, vec![(1, true)]);
        assert_eq!(s.in_flight(), 0, "nothing left with the rotated peer");
        assert_eq!(s.metrics().stalls, 3);
    }

    #[test]
    fn busy_costs_no_penalty_and_the_work_goes_to_another_peer() {
        // 39 blocks: two requests of 16 to peer 1, one of 7 to peer 2, which has room for one
        // more.
        let line = Line::new(40, 1);
        let now = Instant::now();
        let (mut s, reqs) = after_headers(sixteen_per_request(), &line, now);
        s.on_status(now, 2, line.status(40), &line);
        let more = requests(&actions(&mut s));
        assert_eq!(more.len(), 1);
        assert!(more.iter().all(|(p, ..)| *p == 2));
        let (_, id, SyncRequest::GetBlocks(busy_hashes)) = &reqs[0] else {
            panic!("blocks request");
        };
        s.on_response(
            now,
            1,
            *id,
            SyncResponse::Busy {
                retry_after_ms: 500,
            },
            &line,
        );
        let acts = actions(&mut s);
        assert!(penalties(&acts).is_empty(), "{acts:?}");
        // Peer 2 has room for one more request: the same hashes, at once.
        let again = requests(&acts);
        assert!(
            again
                .iter()
                .any(|(p, _, r)| *p == 2 && *r == SyncRequest::GetBlocks(busy_hashes.clone())),
            "{again:?}"
        );
        assert!(again.iter().all(|(p, ..)| *p != 1), "peer 1 waits its hint");
        assert_eq!(s.metrics().busy, 1);
    }

    #[test]
    fn a_late_or_unknown_reply_is_ignored_and_a_wrong_kind_is_penalised() {
        let line = Line::new(100, 1);
        let now = Instant::now();
        let (mut s, reqs) = after_headers(SyncConfig::default(), &line, now);
        s.on_response(now, 1, RequestId(9_999), line.headers(1, 5), &line);
        assert!(penalties(&actions(&mut s)).is_empty());
        let (_, id, _) = &reqs[0];
        s.on_response(now, 1, *id, line.headers(1, 5), &line);
        assert_eq!(
            penalties(&actions(&mut s)),
            vec![(1, Reason::Relay(Offence::MalformedReply))]
        );
    }

    #[test]
    fn a_local_import_failure_restarts_from_the_stored_tip_without_penalty() {
        let line = Line::new(40, 1);
        let now = Instant::now();
        let (mut s, reqs) = after_headers(sixteen_per_request(), &line, now);
        let (_, id, SyncRequest::GetBlocks(hashes)) = &reqs[0] else {
            panic!("blocks request: {reqs:?}");
        };
        s.on_response(now, 1, *id, line.bodies(hashes), &line);
        let _ = actions(&mut s);
        let ready = s.take_ready(now, &line);
        assert_eq!(ready.len(), 16);
        // The store failed: nothing of it was stored (`line.have` is still 1).
        s.on_import_failed(now, &line);
        let mut acts = actions(&mut s);
        // Replies to the dropped chain's requests free the peer's slots; they are not used.
        for (peer, id, request) in requests_in_flight(&s) {
            let SyncRequest::GetBlocks(hashes) = request else {
                continue;
            };
            s.on_response(now, peer, id, line.bodies(&hashes), &line);
            acts.extend(actions(&mut s));
        }
        assert!(penalties(&acts).is_empty(), "{acts:?}");
        let reqs = requests(&acts);
        assert!(
            matches!(reqs.as_slice(), [(1, _, SyncRequest::GetHeaders { locator, .. })]
                if locator.first() == Some(&line.blocks[0].hash())),
            "headers again from the stored tip: {reqs:?}"
        );
        assert!(
            s.take_ready(now, &line).is_empty(),
            "nothing is handed out above the gap"
        );
    }

    #[test]
    fn a_different_genesis_disconnects_without_penalty() {
        let line = Line::new(10, 10);
        let other = Line::new(3, 3);
        let now = Instant::now();
        let mut s = Sched::new(SyncConfig::default());
        let mut status = other.status(3);
        status.genesis = BlockHash([1; 32]);
        s.on_status(now, 4, status, &line);
        assert_eq!(
            actions(&mut s),
            vec![SyncAction::Disconnect {
                peer: 4,
                penalize: false
            }]
        );
    }
}
