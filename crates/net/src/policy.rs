//! The connection manager: a deterministic policy with no I/O and no clock.
//!
//! [`ConnectionManager`] decides which connections to accept, which peer to evict when full,
//! whom to dial and when, and which duplicate connection to close. The libp2p adapter
//! (the crate-private `behaviour` module) feeds it events with the current time and carries out the
//! [`Action`]s it returns; unit tests drive it with a fake clock.
//!
//! Rules:
//! - Outbound target `min_peers`; total cap `max_peers`; inbound slots are
//!   `max_peers - outbound_reserve`.
//! - Persistent peers are always redialled and never evicted; outbound peers are never evicted.
//! - Connections we asked for (our dials, manual connects, persistent peers) and inbound ones
//!   are kept alive by the adapter; outbound connections we did not ask for (a DHT lookup dialled
//!   the peer to query it) close once idle for [`DISCOVERY_CONNECTION_GRACE`] (at the latest
//!   once [`DISCOVERY_CONNECTION_MAX_AGE`] old), unless the
//!   manager adopts them ([`Action::Keep`]): below the outbound target, or the AI quota, an
//!   existing connection is adopted before anything new is dialled. Only adopted outbound
//!   peers count towards the outbound target.
//! - When the inbound slots are full a new inbound peer is accepted on probation (up to
//!   [`PROBATION_SLOTS`] more) if this node serves the DHT (other nodes' lookups dial it); if
//!   it is still there after [`PROBATION_PERIOD`], or there is no probation slot, an inbound
//!   peer is evicted: the best-score,
//!   lowest-latency, recently useful, most diverse and longest-connected peers are protected, and
//!   the victim is the youngest peer of the most crowded IP group (/16 for IPv4, /32 for IPv6),
//!   so an attacker with many connections from one group only displaces itself.
//! - AI-capable peers have a quota of outbound slots (`ai_peer_slots`, like Lighthouse's subnet
//!   peers): while fewer AI-capable peers are connected, the manager dials AI-capable candidates
//!   even at the outbound target (up to the outbound reserve) and asks for a DHT lookup
//!   ([`Action::FindCapable`], backing off from 5 s to a minute) when it knows too few; up to the
//!   quota, AI-capable inbound peers are protected from eviction.
//! - Dial addresses fail into a per-address exponential backoff with jitter; anchors (our last
//!   outbound peers) are dialled first, then, while the node has no peer at all, the bootstrap
//!   nodes.
//! - Partition recovery (the sync service's detector asks for it): [`ConnectionManager::redial`]
//!   dials the address book up to the target at once, past the backoffs that a split ran up;
//!   [`ConnectionManager::set_extra_outbound`] opens one outbound slot beyond the target while
//!   the tip is stale (Bitcoin Core's stale-tip check) and, when it closes, disconnects the
//!   outbound peer that least recently brought something new.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use playergold_protocol::Capabilities;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::addrbook::{
    AddrSource, AddressBook, BackoffConfig, UnixTime, ip_of, is_global, split_peer_id,
};
use crate::config::NetworkConfig;

/// Most dials the manager starts at once. Eight lets a fresh node reach its outbound target in
/// one round while bounding the sockets and handshakes a bad address book can cost us.
pub const MAX_CONCURRENT_DIALS: usize = 8;

/// A dial with no outcome after this long is forgotten (libp2p times dials out well before).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Connected peers asked for addresses in one [`ConnectionManager::poll`] when the address
/// book has too few candidates: two answers usually suffice, and it bounds our request rate.
pub const ADDR_REQUESTS_PER_POLL: usize = 2;

/// At most this share (in percent) of the inbound peers is protected from eviction, so a
/// newcomer can always displace somebody on a small node too (Bitcoin's absolute protection
/// counts assume ~117 inbound slots; a node with 8 would otherwise protect them all and a
/// saturated network could never admit a new node).
pub const MAX_PROTECTED_PERCENT: usize = 75;

/// An outbound connection that closes sooner than this counts as a failed dial: the peer
/// refused or evicted us, or is flaky, and the backoff sends our next dials elsewhere. Longer
/// than [`PROBATION_PERIOD`] plus a maintenance tick, so that a full DHT server evicting us
/// when our probation there ends counts as a refusal too (otherwise we would redial the same
/// full peer at once, forever).
pub const SHORT_LIVED_CONNECTION: Duration = Duration::from_secs(15);

/// Idle time after which an outbound connection we did not ask for closes (Kademlia dials peers
/// to query them). Five seconds lets the next steps of a lookup reuse it, and the swarm never
/// closes a connection while a protocol still uses it, so no request is cut off. Longer only
/// makes every node hold more of other nodes' lookups in its inbound slots.
pub const DISCOVERY_CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Inbound connections accepted beyond the inbound slots without evicting anyone. Kademlia
/// dials the peers it queries, so a busy node always has a few short-lived inbound lookup
/// connections; evicting a real peer for each would churn the whole network. Sixteen covers the
/// lookups of several nodes at once, and a flood beyond it evicts at once as before.
pub const PROBATION_SLOTS: usize = 16;

/// Age at which an outbound connection we did not ask for (nor adopt) is closed even if it is
/// not idle: Kademlia is done with it long before (its lookups time out after 30 s), and a
/// remote that opened streams on it must not turn a lookup into a permanent peer.
pub const DISCOVERY_CONNECTION_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a connection may hold a probation slot before the manager evicts someone (maybe
/// it) to get back within the inbound slots: a lookup's connection closes
/// [`DISCOVERY_CONNECTION_GRACE`] after its last use, so twice that covers a lookup of a few
/// seconds plus the idle time, while a real newcomer waits no longer than needed for its slot.
pub const PROBATION_PERIOD: Duration = Duration::from_secs(10);

/// First pause between two DHT lookups for AI-capable peers while below the AI quota and the
/// book knows too few of them; it doubles after each lookup up to
/// [`CAPABILITY_LOOKUP_INTERVAL`]. Five seconds lets a new node (whose first lookup ran on a young
/// routing table) try again as soon as it knows a few peers, without every newcomer hammering
/// the few AI nodes' neighbourhoods.
pub const CAPABILITY_LOOKUP_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Longest pause between two DHT lookups for AI-capable peers: a lookup costs a few dozen
/// small messages, so once a minute is negligible even on a network without AI nodes.
pub const CAPABILITY_LOOKUP_INTERVAL: Duration = Duration::from_secs(60);

/// Most peers with a remembered score: as many as the address book holds, so every known peer
/// can keep its score while the map stays bounded.
pub const MAX_SCORED_PEERS: usize = crate::addrbook::MAX_ADDRESS_BOOK_ENTRIES;

/// Eviction protection: peers kept for the best reputation score.
pub const PROTECT_BY_SCORE: usize = 4;
/// Eviction protection: peers kept for the lowest ping latency.
pub const PROTECT_BY_LATENCY: usize = 8;
/// Eviction protection: peers kept for most recently delivering a new block or transaction.
pub const PROTECT_BY_USEFUL: usize = 4;
/// Eviction protection: peers kept, one per distinct IP group, least crowded groups first, so
/// peers that are alone in their group survive a flood from one group.
pub const PROTECT_BY_GROUP: usize = 4;

/// A peer's reputation score; higher is better. Reputation lands in a later issue: until then
/// every peer scores 0 unless a caller sets it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Score(pub i32);

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// The remote dialled us.
    Inbound,
    /// We dialled the remote.
    Outbound,
}

/// The network group of an IP address: the /16 of an IPv4 address, the /32 of an IPv6 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpGroup {
    /// First two octets of an IPv4 address.
    V4([u8; 2]),
    /// First four octets of an IPv6 address.
    V6([u8; 4]),
}

impl IpGroup {
    /// The group of `ip`. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    Self::V6([o[0], o[1], o[2], o[3]])
                }
            },
        }
    }
}

/// Why a connection is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer id is on the deny list.
    #[error("peer {0} is on the deny list")]
    DeniedPeer(PeerId),
    /// The IP address is in a denied network.
    #[error("address {0} is in a denied network")]
    DeniedIp(IpAddr),
    /// Allow lists are set and the peer matches none.
    #[error("peer {0} is not on the allow list")]
    NotAllowed(PeerId),
    /// Too many inbound connections from this IP address.
    #[error("too many inbound connections from {0}")]
    PerIpLimit(IpAddr),
    /// Inbound slots are full and every inbound peer is protected.
    #[error("inbound slots are full and no peer can be evicted")]
    Full,
    /// The connection is to ourselves.
    #[error("connection to self")]
    SelfConnection,
    /// The peer is banned (by its reputation or by the operator).
    #[error("peer {0} is banned")]
    BannedPeer(PeerId),
    /// The IP address is banned (too many banned peers came from it).
    #[error("address {0} is banned")]
    BannedIp(IpAddr),
}

/// Most peers and IP addresses banned at once (each entry is a few dozen bytes). The
/// reputation table keeps at most as many bans, so this never refuses one it decided.
pub const MAX_BANNED: usize = 16_384;

/// Why the manager wants a peer gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Evicted to make room for a new inbound peer.
    Evicted,
    /// Missed a heartbeat.
    HeartbeatTimeout,
    /// Asked by a local caller.
    Requested,
    /// The extra outbound slot of the stale-tip check closed: the outbound peer that least
    /// recently delivered something new leaves.
    ExtraOutboundClosed,
    /// Belongs to another network.
    WrongNetwork,
    /// Now on a deny list.
    Denied,
    /// A connection a DHT lookup opened outlived [`DISCOVERY_CONNECTION_MAX_AGE`] without
    /// being adopted.
    Unrequested,
}

/// What the adapter must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dial `peer` at these addresses.
    Dial {
        /// The peer.
        peer: PeerId,
        /// Its addresses whose backoff expired.
        addrs: Vec<Multiaddr>,
    },
    /// Close every connection to `peer`.
    Disconnect {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Ask `peer` for addresses (peer exchange).
    RequestAddrs {
        /// The peer to ask.
        peer: PeerId,
    },
    /// Close one connection (a duplicate to an already connected peer).
    CloseConnection {
        /// The peer.
        peer: PeerId,
        /// The connection to close.
        connection: ConnectionId,
    },
    /// Look up peers with these capabilities in the DHT (the AI quota is unmet and the book
    /// has no candidate); results come back through [`ConnectionManager::note_capabilities`].
    FindCapable {
        /// The capability wanted.
        capabilities: Capabilities,
    },
    /// Keep this connection alive: the manager adopted a connection it did not ask for.
    Keep {
        /// The peer.
        peer: PeerId,
        /// The connection.
        connection: ConnectionId,
    },
}

/// A connected peer, as reported by [`ConnectionManager::peers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub peer: PeerId,
    /// Direction of the connection we keep.
    pub direction: Direction,
    /// Remote IP, if the transport has one.
    pub ip: Option<IpAddr>,
    /// Last measured ping round trip.
    pub latency: Option<Duration>,
    /// Reputation score.
    pub score: Score,
    /// Whether it is a persistent peer.
    pub persistent: bool,
    /// What it offers, from its identify message (none until it arrives).
    pub capabilities: Capabilities,
}

/// One inbound peer seen by the eviction algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvictionCandidate {
    /// The peer.
    pub peer: PeerId,
    /// Its IP group, if known.
    pub group: Option<IpGroup>,
    /// When it connected.
    pub connected_at: Instant,
    /// Reputation score.
    pub score: Score,
    /// Last ping round trip.
    pub latency: Option<Duration>,
    /// Last time it delivered a new block or transaction.
    pub last_useful: Option<Instant>,
}

/// Removes up to `n` (and at most `budget`) candidates that sort first by `key`.
fn protect<K: Ord>(
    candidates: &mut Vec<EvictionCandidate>,
    n: usize,
    budget: &mut usize,
    key: impl Fn(&EvictionCandidate) -> K,
) {
    // Sort so the best come first; ties go to the longer-connected and then to the peer id, so
    // the outcome never depends on map iteration order.
    candidates.sort_by(|a, b| {
        key(a)
            .cmp(&key(b))
            .then(a.connected_at.cmp(&b.connected_at))
            .then(a.peer.cmp(&b.peer))
    });
    let n = n.min(candidates.len()).min(*budget);
    *budget -= n;
    candidates.drain(..n);
}

/// Picks the inbound peer to evict, or `None` when every candidate is protected.
///
/// Protected, in order: [`PROTECT_BY_GROUP`] peers from the least crowded distinct groups,
/// [`PROTECT_BY_SCORE`] best scores, [`PROTECT_BY_LATENCY`] lowest latencies,
/// [`PROTECT_BY_USEFUL`] most recently useful, then half of the rest by connection age; in all
/// at most [`MAX_PROTECTED_PERCENT`] of the candidates. The victim is the youngest peer of the most crowded remaining group (ties: the group with the
/// youngest peer).
pub fn select_eviction_victim(candidates: &[EvictionCandidate]) -> Option<PeerId> {
    let mut rest = candidates.to_vec();
    let mut budget = rest.len() * MAX_PROTECTED_PERCENT / 100;
    let mut group_sizes: HashMap<Option<IpGroup>, usize> = HashMap::new();
    for c in &rest {
        *group_sizes.entry(c.group).or_default() += 1;
    }
    // One per group, least crowded groups first.
    let mut by_group: Vec<EvictionCandidate> = rest.clone();
    by_group.sort_by_key(|c| (group_sizes[&c.group], c.connected_at, c.peer));
    let mut seen = HashSet::new();
    let group_protected: HashSet<PeerId> = by_group
        .iter()
        .filter(|c| seen.insert(c.group))
        .take(PROTECT_BY_GROUP.min(budget))
        .map(|c| c.peer)
        .collect();
    rest.retain(|c| !group_protected.contains(&c.peer));
    budget -= group_protected.len();

    protect(&mut rest, PROTECT_BY_SCORE, &mut budget, |c| {
        Reverse(c.score)
    });
    protect(&mut rest, PROTECT_BY_LATENCY, &mut budget, |c| {
        c.latency.unwrap_or(Duration::MAX)
    });
    // Only peers that were useful at all earn this protection.
    let useful = rest
        .iter()
        .filter(|c| c.last_useful.is_some())
        .count()
        .min(PROTECT_BY_USEFUL);
    protect(&mut rest, useful, &mut budget, |c| Reverse(c.last_useful));
    let half = rest.len() / 2;
    protect(&mut rest, half, &mut budget, |c| c.connected_at);

    let mut groups: HashMap<Option<IpGroup>, Vec<&EvictionCandidate>> = HashMap::new();
    for c in &rest {
        groups.entry(c.group).or_default().push(c);
    }
    let youngest = |members: &Vec<&EvictionCandidate>| {
        members
            .iter()
            .max_by_key(|c| (c.connected_at, c.peer))
            .map(|c| (c.connected_at, c.peer))
    };
    groups
        .values()
        .max_by_key(|members| (members.len(), youngest(members)))
        .and_then(youngest)
        .map(|(_, peer)| peer)
}

#[derive(Clone, Debug)]
struct ConnState {
    peer: PeerId,
    direction: Direction,
    ip: Option<IpAddr>,
}

#[derive(Clone, Debug)]
struct PeerState {
    primary: ConnectionId,
    direction: Direction,
    ip: Option<IpAddr>,
    connected_at: Instant,
    latency: Option<Duration>,
    last_useful: Option<Instant>,
    score: Score,
    evicting: bool,
    capabilities: Capabilities,
    /// We chose this peer (our dial, a manual connect, a persistent peer), as opposed to a
    /// connection Kademlia dialled for a lookup.
    requested: bool,
}

/// The connection manager (see the module documentation).
#[derive(Debug)]
pub struct ConnectionManager {
    local: PeerId,
    min_outbound: usize,
    /// One outbound slot beyond `min_outbound` is open (the stale-tip check).
    extra_outbound: bool,
    max_peers: usize,
    outbound_reserve: usize,
    ai_quota: usize,
    next_capability_lookup: Option<Instant>,
    capability_lookup_delay: Duration,
    short_of_candidates: bool,
    probation: bool,
    inbound_slots: usize,
    max_inbound_per_ip: usize,
    allow_local_addresses: bool,
    allow_peers: HashSet<PeerId>,
    allow_cidrs: Vec<IpNet>,
    deny_peers: HashSet<PeerId>,
    deny_cidrs: Vec<IpNet>,
    banned: HashSet<PeerId>,
    banned_ips: HashSet<IpAddr>,
    persistent: HashSet<PeerId>,
    backoff: BackoffConfig,
    addr_request_interval: Duration,
    last_addr_request: HashMap<PeerId, Instant>,
    rng: StdRng,
    book: AddressBook,
    connections: HashMap<ConnectionId, ConnState>,
    peers: HashMap<PeerId, PeerState>,
    dialing: HashMap<PeerId, Instant>,
    scores: HashMap<PeerId, Score>,
}

impl ConnectionManager {
    /// A manager for `local` with the limits and peers of `config`, starting from `book` (the
    /// persisted address book). Bootstrap and persistent peers are added to the book.
    pub fn new(local: PeerId, config: &NetworkConfig, mut book: AddressBook) -> Self {
        let mut persistent = HashSet::new();
        for (addrs, source) in [
            (&config.bootstrap, AddrSource::Bootstrap),
            (&config.persistent_peers, AddrSource::Persistent),
        ] {
            for addr in addrs {
                if let (addr, Some(peer)) = split_peer_id(addr) {
                    book.add(peer, [addr], source);
                    if source == AddrSource::Persistent {
                        persistent.insert(peer);
                    }
                }
            }
        }
        let rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            local,
            min_outbound: config.min_peers,
            extra_outbound: false,
            max_peers: config.max_peers,
            outbound_reserve: config.outbound_reserve,
            ai_quota: config.ai_quota(),
            next_capability_lookup: None,
            capability_lookup_delay: CAPABILITY_LOOKUP_MIN_INTERVAL,
            short_of_candidates: false,
            probation: false,
            inbound_slots: config.inbound_slots(),
            max_inbound_per_ip: config.max_inbound_per_ip,
            allow_local_addresses: config.allow_local_addresses,
            allow_peers: config.allow_peers.iter().copied().collect(),
            allow_cidrs: config.allow_cidrs.clone(),
            deny_peers: config.deny_peers.iter().copied().collect(),
            deny_cidrs: config.deny_cidrs.clone(),
            banned: HashSet::new(),
            banned_ips: HashSet::new(),
            persistent,
            backoff: config.backoff,
            addr_request_interval: config.addr_request_interval,
            last_addr_request: HashMap::new(),
            rng,
            book,
            connections: HashMap::new(),
            peers: HashMap::new(),
            dialing: HashMap::new(),
            scores: HashMap::new(),
        }
    }

    /// The address book.
    pub fn book(&self) -> &AddressBook {
        &self.book
    }

    /// Marks the current outbound peers as anchors and encodes the book for the store.
    pub fn encode_book(&mut self) -> Vec<u8> {
        let mut outbound: Vec<(&PeerId, &PeerState)> = self
            .peers
            .iter()
            .filter(|(_, s)| s.direction == Direction::Outbound)
            .collect();
        // Longest-connected first: they have proven themselves the longest.
        outbound.sort_by_key(|(p, s)| (s.connected_at, **p));
        let anchors: Vec<PeerId> = outbound.into_iter().map(|(p, _)| *p).collect();
        self.book.set_anchors(&anchors);
        self.book.encode()
    }

    /// Adds addresses learned from `source`. Unless local addresses are allowed, loopback and
    /// private addresses from peers (identify, peer exchange, DHT) are dropped; the operator's
    /// and mDNS's are kept (see [`AddrSource::allows_local`]).
    pub fn add_addresses(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, source: AddrSource) {
        if peer == self.local {
            return;
        }
        let allow_local = self.allow_local_addresses || source.allows_local();
        let addrs = addrs.into_iter().filter(|a| allow_local || is_global(a));
        self.book.add(peer, addrs, source);
    }

    /// An mDNS announcement of `peer` at `addr` expired. The address is forgotten only when the
    /// peer is not connected and the address is failing and unverified
    /// ([`AddressBook::expire_addr`]).
    pub fn on_addr_expired(&mut self, peer: &PeerId, addr: &Multiaddr) {
        if !self.peers.contains_key(peer) {
            self.book.expire_addr(peer, addr);
        }
    }

    /// A connected peer identified itself with these capabilities (they replace what we knew).
    pub fn on_identified(&mut self, peer: PeerId, capabilities: Capabilities) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.capabilities = capabilities;
        }
        self.book.set_capabilities(&peer, capabilities);
    }

    /// A DHT lookup says `peer` offers `capabilities` (added to what the book knows; the book
    /// must already know the peer's addresses).
    pub fn note_capabilities(&mut self, peer: PeerId, capabilities: Capabilities) {
        if let Some(known) = self.book.get(&peer).map(|r| r.capabilities) {
            self.book.set_capabilities(&peer, known.with(capabilities));
        }
    }

    /// The remote IP of an established connection.
    pub fn connection_ip(&self, connection: ConnectionId) -> Option<IpAddr> {
        self.connections.get(&connection).and_then(|c| c.ip)
    }

    fn is_ai(capabilities: Capabilities) -> bool {
        capabilities.contains(Capabilities::AI_COMPUTE)
    }

    fn ip_denied(&self, ip: IpAddr) -> bool {
        self.deny_cidrs.iter().any(|net| net.contains(&ip))
    }

    fn check_access(&self, peer: PeerId, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if peer == self.local {
            return Err(Refusal::SelfConnection);
        }
        if self.deny_peers.contains(&peer) {
            return Err(Refusal::DeniedPeer(peer));
        }
        if self.banned.contains(&peer) {
            return Err(Refusal::BannedPeer(peer));
        }
        if let Some(ip) = ip.filter(|ip| self.ip_denied(*ip)) {
            return Err(Refusal::DeniedIp(ip));
        }
        if let Some(ip) = ip.filter(|ip| self.banned_ips.contains(ip)) {
            return Err(Refusal::BannedIp(ip));
        }
        let restricted = !self.allow_peers.is_empty() || !self.allow_cidrs.is_empty();
        let allowed = self.allow_peers.contains(&peer)
            || ip.is_some_and(|ip| self.allow_cidrs.iter().any(|net| net.contains(&ip)));
        if restricted && !allowed && !self.persistent.contains(&peer) {
            return Err(Refusal::NotAllowed(peer));
        }
        Ok(())
    }

    fn inbound_from_ip(&self, ip: IpAddr) -> usize {
        self.peers
            .values()
            .filter(|s| s.direction == Direction::Inbound && !s.evicting && s.ip == Some(ip))
            .count()
    }

    /// Outbound peers that count towards the outbound target: those we asked for.
    fn kept_outbound(&self) -> usize {
        self.peers
            .values()
            .filter(|s| s.direction == Direction::Outbound && !s.evicting && s.requested)
            .count()
    }

    /// Whether a new outbound connection to `peer` is one we asked for (a dial of ours, a
    /// persistent peer, or a peer we already keep), so the adapter keeps it alive.
    pub fn wants(&self, peer: &PeerId) -> bool {
        self.dialing.contains_key(peer)
            || self.persistent.contains(peer)
            || self.peers.get(peer).is_some_and(|s| s.requested)
    }

    fn live_peers(&self, direction: Direction) -> usize {
        self.peers
            .values()
            .filter(|s| s.direction == direction && !s.evicting)
            .count()
    }

    /// Checks an inbound connection before its handshake, knowing only the remote IP.
    pub fn check_pending_inbound(&self, ip: Option<IpAddr>) -> Result<(), Refusal> {
        if let Some(ip) = ip {
            if self.ip_denied(ip) {
                return Err(Refusal::DeniedIp(ip));
            }
            if self.inbound_from_ip(ip) >= self.max_inbound_per_ip {
                return Err(Refusal::PerIpLimit(ip));
            }
        }
        Ok(())
    }

    /// Decides on an authenticated inbound connection. `Ok` may carry a [`Action::Disconnect`]
    /// evicting another inbound peer; the connection itself is registered later by
    /// [`ConnectionManager::on_established`].
    pub fn check_established_inbound(
        &mut self,
        peer: PeerId,
        ip: Option<IpAddr>,
    ) -> Result<Vec<Action>, Refusal> {
        self.check_access(peer, ip)?;
        if self.peers.contains_key(&peer) || self.persistent.contains(&peer) {
            // A duplicate is resolved in `on_established`; persistent peers always get in.
            return Ok(Vec::new());
        }
        self.check_pending_inbound(ip)?;
        let inbound = self.live_peers(Direction::Inbound);
        let total = inbound + self.live_peers(Direction::Outbound);
        if inbound < self.inbound_slots && total < self.max_peers {
            return Ok(Vec::new());
        }
        if self.probation
            && inbound < self.inbound_slots + PROBATION_SLOTS
            && total < self.max_peers + PROBATION_SLOTS
        {
            // On probation: nobody is evicted unless it stays (see `settle_inbound`).
            return Ok(Vec::new());
        }
        let victim = self.pick_victim().ok_or(Refusal::Full)?;
        if let Some(state) = self.peers.get_mut(&victim) {
            state.evicting = true;
        }
        tracing::debug!(%victim, newcomer = %peer, "evicting inbound peer");
        Ok(vec![Action::Disconnect {
            peer: victim,
            reason: DisconnectReason::Evicted,
        }])
    }

    /// Evicts inbound peers while more of those connected for at least [`PROBATION_PERIOD`]
    /// than the inbound slots: a connection that stays is a peer and must fit, and the eviction
    /// algorithm decides who makes room. Younger connections (lookups) do not count.
    fn settle_inbound(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let settled = self
            .peers
            .values()
            .filter(|s| {
                s.direction == Direction::Inbound
                    && !s.evicting
                    && now.saturating_duration_since(s.connected_at) >= PROBATION_PERIOD
            })
            .count();
        for _ in 0..settled.saturating_sub(self.inbound_slots) {
            let Some(victim) = self.pick_victim() else {
                break;
            };
            if let Some(state) = self.peers.get_mut(&victim) {
                state.evicting = true;
            }
            tracing::debug!(%victim, "evicting inbound peer after probation");
            actions.push(Action::Disconnect {
                peer: victim,
                reason: DisconnectReason::Evicted,
            });
        }
    }

    /// The inbound peer to evict (see [`select_eviction_victim`]), persistent peers and
    /// AI-capable peers within the quota excepted.
    fn pick_victim(&self) -> Option<PeerId> {
        // AI-capable peers up to the quota (counting the outbound ones, which are never
        // evicted) are protected, the longest connected first.
        let ai_outbound = self
            .peers
            .values()
            .filter(|s| {
                s.direction == Direction::Outbound && !s.evicting && Self::is_ai(s.capabilities)
            })
            .count();
        let mut ai_inbound: Vec<(&PeerId, &PeerState)> = self
            .peers
            .iter()
            .filter(|(_, s)| {
                s.direction == Direction::Inbound && !s.evicting && Self::is_ai(s.capabilities)
            })
            .collect();
        ai_inbound.sort_by_key(|(p, s)| (s.connected_at, **p));
        let ai_protected: HashSet<PeerId> = ai_inbound
            .into_iter()
            .take(self.ai_quota.saturating_sub(ai_outbound))
            .map(|(p, _)| *p)
            .collect();
        let candidates: Vec<EvictionCandidate> = self
            .peers
            .iter()
            .filter(|(p, s)| {
                s.direction == Direction::Inbound
                    && !s.evicting
                    && !self.persistent.contains(p)
                    && !ai_protected.contains(p)
            })
            .map(|(p, s)| EvictionCandidate {
                peer: *p,
                group: s.ip.map(IpGroup::of),
                connected_at: s.connected_at,
                score: s.score,
                latency: s.latency,
                last_useful: s.last_useful,
            })
            .collect();
        select_eviction_victim(&candidates)
    }

    /// Decides on an authenticated outbound connection: only the access lists apply, since we
    /// chose to dial.
    pub fn check_established_outbound(
        &self,
        peer: PeerId,
        ip: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        self.check_access(peer, ip)
    }

    /// Checks a dial before it starts: a denied peer is not dialled, nor a peer whose every
    /// address is in a denied network.
    pub fn check_dial(&self, peer: PeerId, addrs: &[Multiaddr]) -> Result<(), Refusal> {
        if peer == self.local {
            return Err(Refusal::SelfConnection);
        }
        if self.deny_peers.contains(&peer) {
            return Err(Refusal::DeniedPeer(peer));
        }
        if self.banned.contains(&peer) {
            return Err(Refusal::BannedPeer(peer));
        }
        let denied_ip = |a: &Multiaddr| {
            ip_of(a).filter(|ip| self.ip_denied(*ip) || self.banned_ips.contains(ip))
        };
        // `Some` only when every address is denied; then refuse with the first one.
        match addrs
            .iter()
            .map(denied_ip)
            .collect::<Option<Vec<IpAddr>>>()
            .and_then(|ips| ips.first().copied())
        {
            Some(ip) => Err(Refusal::DeniedIp(ip)),
            None => Ok(()),
        }
    }

    /// Registers an established connection. Returns a [`Action::CloseConnection`] when it
    /// duplicates an existing one: both ends keep the connection dialled by the smaller peer id,
    /// so simultaneous dials never end with both connections closed.
    pub fn on_established(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        direction: Direction,
        remote: &Multiaddr,
        now: Instant,
        wall: UnixTime,
    ) -> Vec<Action> {
        let ip = ip_of(remote);
        self.connections.insert(
            connection,
            ConnState {
                peer,
                direction,
                ip,
            },
        );
        let requested = if direction == Direction::Outbound {
            self.book.record_connected(&peer, Some(remote), wall);
            self.dialing.remove(&peer).is_some() || self.persistent.contains(&peer)
        } else {
            self.book.record_connected(&peer, None, wall);
            false
        };
        let score = self.scores.get(&peer).copied().unwrap_or_default();
        let capabilities = self
            .book
            .get(&peer)
            .map_or(Capabilities::NONE, |r| r.capabilities);
        let Some(existing) = self.peers.get_mut(&peer) else {
            self.peers.insert(
                peer,
                PeerState {
                    primary: connection,
                    direction,
                    ip,
                    connected_at: now,
                    latency: None,
                    last_useful: None,
                    score,
                    evicting: false,
                    capabilities,
                    requested,
                },
            );
            if direction == Direction::Outbound {
                self.last_addr_request.insert(peer, now);
                return vec![Action::RequestAddrs { peer }];
            }
            return Vec::new();
        };
        let dialer_of = |d: Direction| {
            if d == Direction::Outbound {
                self.local
            } else {
                peer
            }
        };
        let keep_new =
            existing.direction != direction && dialer_of(direction) < dialer_of(existing.direction);
        let adopted = requested && !existing.requested;
        existing.requested |= requested;
        let close = if keep_new {
            let old = existing.primary;
            existing.primary = connection;
            existing.direction = direction;
            existing.ip = ip;
            old
        } else {
            connection
        };
        let mut actions = vec![Action::CloseConnection {
            peer,
            connection: close,
        }];
        if adopted && !keep_new {
            // The connection we keep was not ours until now: keep it alive.
            actions.push(Action::Keep {
                peer,
                connection: existing.primary,
            });
        }
        actions
    }

    /// Forgets a closed connection. A primary outbound connection we asked for that lived less
    /// than [`SHORT_LIVED_CONNECTION`] counts as a failed dial.
    pub fn on_closed(&mut self, connection: ConnectionId, now: Instant) {
        let Some(conn) = self.connections.remove(&connection) else {
            return;
        };
        let Some(state) = self.peers.get(&conn.peer) else {
            return;
        };
        if state.primary != connection {
            return;
        }
        if state.direction == Direction::Outbound
            && state.requested
            && now.saturating_duration_since(state.connected_at) < SHORT_LIVED_CONNECTION
        {
            self.book
                .record_peer_failure(&conn.peer, now, &self.backoff, &mut self.rng);
        }
        let other = self
            .connections
            .iter()
            .find(|(_, c)| c.peer == conn.peer)
            .map(|(id, c)| (*id, c.clone()));
        match other {
            Some((id, c)) => {
                if let Some(state) = self.peers.get_mut(&conn.peer) {
                    state.primary = id;
                    state.direction = c.direction;
                    state.ip = c.ip;
                }
            }
            None => {
                self.peers.remove(&conn.peer);
                self.last_addr_request.remove(&conn.peer);
            }
        }
    }

    /// Records a dial we started (through [`Action::Dial`] or a manual connect).
    pub fn on_dial_started(&mut self, peer: PeerId, now: Instant) {
        self.dialing.insert(peer, now);
    }

    /// Forgets a dial that libp2p did not start (the peer was already connected or dialling).
    pub fn on_dial_cancelled(&mut self, peer: PeerId) {
        self.dialing.remove(&peer);
    }

    /// Records a failed dial: every address in `failed` backs off; if no address was named the
    /// peer as a whole backs off.
    pub fn on_dial_failure(&mut self, peer: PeerId, failed: &[Multiaddr], now: Instant) {
        self.dialing.remove(&peer);
        if self.peers.contains_key(&peer) {
            // Lost a race against an established connection: nothing failed.
            return;
        }
        for addr in failed {
            self.book
                .record_addr_failure(&peer, addr, now, &self.backoff, &mut self.rng);
        }
        self.book
            .record_peer_failure(&peer, now, &self.backoff, &mut self.rng);
    }

    /// Records a ping round trip.
    pub fn on_ping(&mut self, peer: PeerId, rtt: Duration) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.latency = Some(rtt);
        }
    }

    /// A missed heartbeat: the peer is disconnected (and replaced by the dial logic).
    pub fn on_ping_failure(&mut self, peer: PeerId) -> Vec<Action> {
        if self.peers.contains_key(&peer) {
            vec![Action::Disconnect {
                peer,
                reason: DisconnectReason::HeartbeatTimeout,
            }]
        } else {
            Vec::new()
        }
    }

    /// The peer delivered a new block or transaction (protects it from eviction).
    pub fn mark_useful(&mut self, peer: PeerId, now: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.last_useful = Some(now);
        }
    }

    /// Sets a peer's reputation score (kept across reconnects while the peer is connected or in
    /// the address book).
    pub fn set_score(&mut self, peer: PeerId, score: Score) {
        if self.scores.len() >= MAX_SCORED_PEERS && !self.scores.contains_key(&peer) {
            let (peers, book) = (&self.peers, &self.book);
            self.scores
                .retain(|p, _| peers.contains_key(p) || book.get(p).is_some());
            if self.scores.len() >= MAX_SCORED_PEERS {
                return;
            }
        }
        self.scores.insert(peer, score);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.score = score;
        }
    }

    /// Whether `peer` is a persistent peer.
    pub fn is_persistent(&self, peer: &PeerId) -> bool {
        self.persistent.contains(peer)
    }

    /// Whether `peer` is connected.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Connected peers, sorted by peer id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(p, s)| PeerInfo {
                peer: *p,
                direction: s.direction,
                ip: s.ip,
                latency: s.latency,
                score: s.score,
                persistent: self.persistent.contains(p),
                capabilities: s.capabilities,
            })
            .collect();
        out.sort_by_key(|i| i.peer);
        out
    }

    /// Whether this node serves the DHT. Only DHT servers receive other nodes' lookups, so only
    /// they accept inbound connections on probation beyond their slots (see
    /// [`PROBATION_SLOTS`]); any other node evicts at once.
    pub fn set_dht_server(&mut self, server: bool) {
        self.probation = server;
    }

    /// Whether the last [`ConnectionManager::poll`] found fewer dial candidates in the book than
    /// it wanted (discovery should look for more).
    pub fn short_of_candidates(&self) -> bool {
        self.short_of_candidates
    }

    /// Whether the node has fewer outbound peers than its target.
    pub fn below_target(&self) -> bool {
        self.kept_outbound() < self.outbound_target()
    }

    /// The outbound target: `min_peers`, plus one while the extra slot is open. A node with no
    /// target (it only dials when told to) gets no extra slot either.
    fn outbound_target(&self) -> usize {
        self.min_outbound + usize::from(self.extra_outbound && self.min_outbound > 0)
    }

    /// Whether the extra outbound slot of the stale-tip check is open.
    pub fn extra_outbound(&self) -> bool {
        self.extra_outbound
    }

    /// Opens or closes one outbound slot beyond the target (Bitcoin Core's stale-tip check: a
    /// node whose tip went stale tries one more peer, which may know blocks the others do not).
    /// Opening it makes the next [`ConnectionManager::poll`] dial one more peer. Closing it,
    /// when that leaves more outbound peers than the target, disconnects the non-persistent
    /// outbound peer we asked for that least recently delivered a new block or transaction
    /// (one that never did goes first; ties go to the youngest connection), so a useful
    /// newcomer stays and a useless one goes.
    pub fn set_extra_outbound(&mut self, open: bool) -> Vec<Action> {
        self.extra_outbound = open;
        if open || self.kept_outbound() <= self.outbound_target() {
            return Vec::new();
        }
        let victim = self
            .peers
            .iter()
            .filter(|(p, s)| {
                s.direction == Direction::Outbound
                    && s.requested
                    && !s.evicting
                    && !self.persistent.contains(*p)
            })
            .min_by_key(|(p, s)| (s.last_useful, Reverse(s.connected_at), **p))
            .map(|(p, _)| *p);
        let Some(peer) = victim else {
            return Vec::new();
        };
        if let Some(state) = self.peers.get_mut(&peer) {
            state.evicting = true;
        }
        vec![Action::Disconnect {
            peer,
            reason: DisconnectReason::ExtraOutboundClosed,
        }]
    }

    /// Dials the address book now, up to the outbound target, past the dial backoffs of peers
    /// we have held a connection to: the partition detector's recovery. Their addresses failed
    /// while the network was split and back off for up to `backoff.max`, which would keep the
    /// sides apart for that long after the split heals. Peers we never reached keep their
    /// backoff (a redial is no reason to hammer dead addresses), and every failure count is
    /// kept, so a redial that fails again backs off further. Otherwise like
    /// [`ConnectionManager::poll`].
    pub fn redial(&mut self, now: Instant) -> Vec<Action> {
        self.poll_with(now, true)
    }

    /// Number of connected peers with the given direction.
    pub fn count(&self, direction: Direction) -> usize {
        self.peers
            .values()
            .filter(|s| s.direction == direction)
            .count()
    }

    /// The dials to start now: persistent peers that are down; then, while below the outbound
    /// target, the best candidates of the address book (anchors first, then the bootstrap nodes
    /// while we have no peer at all, then fewest failures, most recently seen, IP groups we
    /// have no outbound peer in); and, while below the AI quota, AI-capable candidates first,
    /// even at the outbound target. Also adopts lookup connections when that meets a target,
    /// closes stale ones, ends probation (see the module documentation) and asks for addresses
    /// or a capability lookup when candidates are short.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        self.poll_with(now, false)
    }

    /// The addresses of `peer` to dial now: those whose backoff expired, or, on a redial
    /// (`past_backoff`) of a peer we have held a connection to, all of them.
    fn dial_addrs(&self, peer: &PeerId, now: Instant, past_backoff: bool) -> Vec<Multiaddr> {
        match self.book.get(peer) {
            Some(r) if past_backoff && r.last_seen.is_some() => {
                r.addrs.iter().map(|e| e.addr.clone()).collect()
            }
            _ => self.book.dialable(peer, now),
        }
    }

    fn poll_with(&mut self, now: Instant, past_backoff: bool) -> Vec<Action> {
        self.dialing
            .retain(|_, started| now.saturating_duration_since(*started) < DIAL_TIMEOUT);
        for (peer, state) in &self.peers {
            if now.saturating_duration_since(state.connected_at) >= SHORT_LIVED_CONNECTION {
                self.book.record_healthy(peer);
            }
        }
        let mut actions = Vec::new();
        let mut persistent: Vec<PeerId> = self.persistent.iter().copied().collect();
        persistent.sort();
        for peer in persistent {
            if self.peers.contains_key(&peer) || self.dialing.contains_key(&peer) {
                continue;
            }
            let addrs = self.dial_addrs(&peer, now, past_backoff);
            if !addrs.is_empty() {
                self.dialing.insert(peer, now);
                actions.push(Action::Dial { peer, addrs });
            }
        }
        self.adopt(&mut actions);
        self.close_stale_lookup_connections(now, &mut actions);
        self.settle_inbound(now, &mut actions);

        let outbound = self.kept_outbound();
        let total = self.live_peers(Direction::Outbound) + self.live_peers(Direction::Inbound);
        let in_flight = self.dialing.len();
        let room = MAX_CONCURRENT_DIALS
            .saturating_sub(in_flight)
            .min(self.max_peers.saturating_sub(total + in_flight));
        let want = self
            .outbound_target()
            .saturating_sub(outbound + in_flight)
            .min(room);
        let ai_connected = self.kept_ai();
        let ai_dialing = self
            .dialing
            .keys()
            .filter(|p| {
                self.book
                    .get(p)
                    .is_some_and(|r| Self::is_ai(r.capabilities))
            })
            .count();
        let want_ai = self
            .ai_quota
            .saturating_sub(ai_connected + ai_dialing)
            .min(self.outbound_reserve.saturating_sub(outbound + in_flight))
            .min(room);
        if want == 0 && want_ai == 0 {
            self.short_of_candidates = false;
            return actions;
        }
        let used_groups: HashSet<IpGroup> = self
            .peers
            .values()
            .filter(|s| s.direction == Direction::Outbound)
            .filter_map(|s| s.ip.map(IpGroup::of))
            .collect();
        let isolated = self.peers.is_empty();
        // Sort key: not an anchor, not a bootstrap node while isolated, IP group already used,
        // failures, least recently seen, peer id.
        type DialKey = (bool, bool, bool, u32, Reverse<Option<UnixTime>>, PeerId);
        let mut candidates: Vec<(DialKey, bool, Vec<Multiaddr>)> = self
            .book
            .records()
            .filter(|r| {
                !self.peers.contains_key(&r.peer)
                    && !self.dialing.contains_key(&r.peer)
                    && r.peer != self.local
                    && !self.deny_peers.contains(&r.peer)
            })
            .filter_map(|r| {
                let addrs: Vec<Multiaddr> = self
                    .dial_addrs(&r.peer, now, past_backoff)
                    .into_iter()
                    .filter(|a| ip_of(a).is_none_or(|ip| !self.ip_denied(ip)))
                    .collect();
                let group = addrs.iter().find_map(ip_of).map(IpGroup::of);
                let group_used = group.is_some_and(|g| used_groups.contains(&g));
                let bootstrap_first = isolated && r.source == AddrSource::Bootstrap;
                (!addrs.is_empty()).then_some((
                    (
                        !r.anchor,
                        !bootstrap_first,
                        group_used,
                        r.failures.0,
                        Reverse(r.last_seen),
                        r.peer,
                    ),
                    Self::is_ai(r.capabilities),
                    addrs,
                ))
            })
            .collect();
        candidates.sort_by_key(|(key, ..)| *key);

        let mut dials: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        if want_ai > 0 {
            let mut ai = Vec::new();
            candidates.retain_mut(|(key, is_ai, addrs)| {
                if *is_ai && ai.len() < want_ai {
                    ai.push((key.5, std::mem::take(addrs)));
                    false
                } else {
                    true
                }
            });
            // Look up more only when the book knows too few, not when the ones it knows are
            // backing off: a lookup would only find them again.
            let known_ai = self
                .book
                .records()
                .filter(|r| Self::is_ai(r.capabilities) && !self.peers.contains_key(&r.peer))
                .count();
            let lookup_due = self.next_capability_lookup.is_none_or(|t| now >= t);
            if known_ai < want_ai && lookup_due {
                self.next_capability_lookup = Some(now + self.capability_lookup_delay);
                self.capability_lookup_delay =
                    (self.capability_lookup_delay * 2).min(CAPABILITY_LOOKUP_INTERVAL);
                actions.push(Action::FindCapable {
                    capabilities: Capabilities::AI_COMPUTE,
                });
            }
            dials.extend(ai);
        }
        // AI-capable peers count towards the outbound target too.
        let want = want.saturating_sub(dials.len());
        self.short_of_candidates = candidates.len() < want;
        if candidates.len() < want {
            let mut ask: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(p, s)| {
                    !s.evicting
                        && self.last_addr_request.get(p).is_none_or(|t| {
                            now.saturating_duration_since(*t) >= self.addr_request_interval
                        })
                })
                .map(|(p, _)| *p)
                .collect();
            ask.sort();
            for peer in ask.into_iter().take(ADDR_REQUESTS_PER_POLL) {
                self.last_addr_request.insert(peer, now);
                actions.push(Action::RequestAddrs { peer });
            }
        }
        dials.extend(
            candidates
                .into_iter()
                .take(want)
                .map(|((.., peer), _, addrs)| (peer, addrs)),
        );
        for (peer, addrs) in dials {
            self.dialing.insert(peer, now);
            actions.push(Action::Dial { peer, addrs });
        }
        actions
    }

    /// Closes outbound connections we did not ask for (and did not adopt) once they are
    /// [`DISCOVERY_CONNECTION_MAX_AGE`] old: normally they close when idle, but a remote's
    /// services may hold streams on one and keep it open for good.
    fn close_stale_lookup_connections(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for (peer, state) in &mut self.peers {
            if state.direction == Direction::Outbound
                && !state.requested
                && !state.evicting
                && now.saturating_duration_since(state.connected_at) >= DISCOVERY_CONNECTION_MAX_AGE
            {
                state.evicting = true;
                actions.push(Action::Disconnect {
                    peer: *peer,
                    reason: DisconnectReason::Unrequested,
                });
            }
        }
    }

    /// Kept AI-capable peers: inbound ones and outbound ones we asked for. Whoever dialled
    /// counts: a duplicate connection keeps only one direction, so two nodes that both want each
    /// other would never both see it outbound.
    fn kept_ai(&self) -> usize {
        self.peers
            .values()
            .filter(|s| {
                !s.evicting
                    && Self::is_ai(s.capabilities)
                    && (s.direction == Direction::Inbound || s.requested)
            })
            .count()
    }

    /// Adopts outbound connections we did not ask for (a DHT lookup dialled them) while below
    /// the AI quota or the outbound target: a live connection is a better candidate than any
    /// address in the book. AI-capable peers first (up to the outbound reserve), then the
    /// longest connected.
    fn adopt(&mut self, actions: &mut Vec<Action>) {
        let in_flight = self.dialing.len();
        let kept = self.kept_outbound();
        let mut need = self.outbound_target().saturating_sub(kept + in_flight);
        let mut room = self.outbound_reserve.saturating_sub(kept + in_flight);
        let mut ai_need = self.ai_quota.saturating_sub(self.kept_ai());
        if (need == 0 && ai_need == 0) || room == 0 {
            return;
        }
        let mut candidates: Vec<(bool, Instant, PeerId)> = self
            .peers
            .iter()
            .filter(|(_, s)| s.direction == Direction::Outbound && !s.requested && !s.evicting)
            .map(|(p, s)| (!Self::is_ai(s.capabilities), s.connected_at, *p))
            .collect();
        candidates.sort();
        for (not_ai, _, peer) in candidates {
            let for_ai = !not_ai && ai_need > 0;
            if room == 0 || (!for_ai && need == 0) {
                break;
            }
            if for_ai {
                ai_need -= 1;
            }
            need = need.saturating_sub(1);
            room -= 1;
            if let Some(state) = self.peers.get_mut(&peer) {
                state.requested = true;
                tracing::debug!(%peer, "adopting a connection a DHT lookup opened");
                actions.push(Action::Keep {
                    peer,
                    connection: state.primary,
                });
            }
        }
    }

    /// Forgets a peer's addresses (it belongs to another network, or lied about itself).
    pub fn forget(&mut self, peer: &PeerId) {
        self.book.remove(peer);
    }

    /// Bans a peer until [`ConnectionManager::unban`] (the reputation layer owns the expiry):
    /// it is refused at the handshake and never dialled. Returns the disconnect to carry out if
    /// it is connected. Persistent peers cannot be banned; at [`MAX_BANNED`] bans the new one is
    /// refused (`false`).
    pub fn ban(&mut self, peer: PeerId) -> (bool, Vec<Action>) {
        if self.persistent.contains(&peer)
            || (!self.banned.contains(&peer) && self.banned.len() >= MAX_BANNED)
        {
            return (false, Vec::new());
        }
        self.banned.insert(peer);
        let actions = if self.peers.contains_key(&peer) {
            vec![Action::Disconnect {
                peer,
                reason: DisconnectReason::Denied,
            }]
        } else {
            Vec::new()
        };
        (true, actions)
    }

    /// Lifts a ban; `false` if the peer was not banned.
    pub fn unban(&mut self, peer: &PeerId) -> bool {
        self.banned.remove(peer)
    }

    /// Bans an IP address until [`ConnectionManager::unban_ip`]; `false` at [`MAX_BANNED`].
    pub fn ban_ip(&mut self, ip: IpAddr) -> bool {
        if !self.banned_ips.contains(&ip) && self.banned_ips.len() >= MAX_BANNED {
            return false;
        }
        self.banned_ips.insert(ip)
    }

    /// Lifts an IP ban.
    pub fn unban_ip(&mut self, ip: &IpAddr) -> bool {
        self.banned_ips.remove(ip)
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains(peer)
    }

    /// Adds a peer to the deny list and returns the disconnect to carry out if it is connected.
    pub fn deny(&mut self, peer: PeerId) -> Vec<Action> {
        self.deny_peers.insert(peer);
        if self.peers.contains_key(&peer) {
            vec![Action::Disconnect {
                peer,
                reason: DisconnectReason::Denied,
            }]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::protocol::NetworkName;

    /// A fake clock: a fixed origin plus whatever the test advances.
    struct Clock(Instant);

    impl Clock {
        fn advance(&mut self, d: Duration) -> Instant {
            self.0 += d;
            self.0
        }
    }

    fn config(min: usize, max: usize, reserve: usize) -> NetworkConfig {
        let mut cfg = NetworkConfig::new(NetworkName::new("unit").expect("valid"));
        cfg.min_peers = min;
        cfg.max_peers = max;
        cfg.outbound_reserve = reserve;
        cfg.max_inbound_per_ip = 100;
        cfg.allow_local_addresses = true;
        cfg.rng_seed = Some(42);
        // Tests of the AI quota set it themselves.
        cfg.ai_peer_slots = 0;
        cfg.backoff = BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter_percent: 0,
        };
        cfg
    }

    fn ip_addr(a: u8, b: u8, c: u8, d: u8) -> Multiaddr {
        format!("/ip4/{a}.{b}.{c}.{d}/udp/1/quic-v1")
            .parse()
            .expect("addr")
    }

    struct Harness {
        mgr: ConnectionManager,
        next_conn: usize,
        clock: Clock,
    }

    impl Harness {
        fn new(cfg: &NetworkConfig) -> Self {
            Self {
                mgr: ConnectionManager::new(PeerId::random(), cfg, AddressBook::new()),
                next_conn: 1,
                clock: Clock(Instant::now()),
            }
        }

        fn conn(&mut self) -> ConnectionId {
            self.next_conn += 1;
            ConnectionId::new_unchecked(self.next_conn)
        }

        /// Connects an inbound peer from `addr`; returns its id and the evictions it caused.
        fn inbound(&mut self, addr: Multiaddr) -> (PeerId, Result<Vec<Action>, Refusal>) {
            let peer = PeerId::random();
            let now = self.clock.advance(Duration::from_secs(1));
            let verdict = self.mgr.check_established_inbound(peer, ip_of(&addr));
            if let Ok(actions) = &verdict {
                let c = self.conn();
                self.mgr
                    .on_established(c, peer, Direction::Inbound, &addr, now, UnixTime(1));
                for a in actions {
                    if let Action::Disconnect { peer, .. } = a {
                        self.close_peer(*peer);
                    }
                }
            }
            (peer, verdict)
        }

        fn outbound(&mut self, addr: Multiaddr) -> PeerId {
            let peer = PeerId::random();
            let now = self.clock.advance(Duration::from_secs(1));
            let c = self.conn();
            self.mgr
                .on_established(c, peer, Direction::Outbound, &addr, now, UnixTime(1));
            peer
        }

        /// Lets probation run out and carries out the evictions it causes, until none is left.
        fn settle(&mut self) {
            loop {
                let now = self.clock.advance(PROBATION_PERIOD);
                let evicted: Vec<PeerId> = self
                    .mgr
                    .poll(now)
                    .into_iter()
                    .filter_map(|a| match a {
                        Action::Disconnect {
                            peer,
                            reason: DisconnectReason::Evicted,
                        } => Some(peer),
                        _ => None,
                    })
                    .collect();
                if evicted.is_empty() {
                    return;
                }
                for peer in evicted {
                    self.close_peer(peer);
                }
            }
        }

        fn close_peer(&mut self, peer: PeerId) {
            let ids: Vec<ConnectionId> = self
                .mgr
                .connections
                .iter()
                .filter(|(_, c)| c.peer == peer)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.mgr.on_closed(id, self.clock.0);
            }
        }
    }

    #[test]
    fn ip_groups_are_slash16_and_slash32() {
        let a = IpGroup::of(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let b = IpGroup::of(IpAddr::V4(Ipv4Addr::new(10, 1, 200, 9)));
        let c = IpGroup::of(IpAddr::V4(Ipv4Addr::new(10, 2, 2, 3)));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped: IpAddr = "::ffff:10.1.9.9".parse().expect("ip");
        assert_eq!(IpGroup::of(mapped), a);
        let v6a: IpAddr = "2001:db8:1::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:2::1".parse().expect("ip");
        assert_eq!(IpGroup::of(v6a), IpGroup::of(v6b));
    }

    #[test]
    fn dials_from_book_up_to_target_with_anchors_first() {
        let cfg = config(3, 10, 4);
        let mut book = AddressBook::new();
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            book.add(*p, [ip_addr(10, i as u8, 0, 1)], AddrSource::PeerExchange);
        }
        book.set_anchors(&[peers[4], peers[5]]);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let now = Instant::now();
        let dials: Vec<PeerId> = mgr
            .poll(now)
            .into_iter()
            .filter_map(|a| match a {
                Action::Dial { peer, .. } => Some(peer),
                _ => None,
            })
            .collect();
        assert_eq!(dials.len(), 3);
        assert!(
            dials.contains(&peers[4]) && dials.contains(&peers[5]),
            "anchors dialled first"
        );
        // In flight dials count towards the target: nothing more to do.
        assert!(mgr.poll(now).is_empty());
    }

    #[test]
    fn failed_dials_back_off_exponentially() {
        let cfg = config(1, 10, 4);
        let mut book = AddressBook::new();
        let p = PeerId::random();
        let addr = ip_addr(10, 0, 0, 1);
        book.add(p, [addr.clone()], AddrSource::PeerExchange);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let mut clock = Clock(Instant::now());
        let mut waits = Vec::new();
        for _ in 0..5 {
            let mut t = clock.0;
            // Find the first whole second at which the peer is dialled again.
            let mut waited = 0;
            loop {
                if mgr
                    .poll(t)
                    .iter()
                    .any(|a| matches!(a, Action::Dial { peer, .. } if *peer == p))
                {
                    break;
                }
                waited += 1;
                t = clock.advance(Duration::from_secs(1));
            }
            waits.push(waited);
            mgr.on_dial_failure(p, std::slice::from_ref(&addr), t);
        }
        // Per-address and per-peer failure counts grow together: 1, 2, 4, 8 seconds.
        assert_eq!(waits, [0, 1, 2, 4, 8]);
    }

    #[test]
    fn persistent_peers_are_always_redialled_and_never_evicted() {
        let mut cfg = config(0, 4, 1);
        let persistent = PeerId::random();
        cfg.persistent_peers.push(
            format!("/ip4/10.9.0.1/tcp/1/p2p/{persistent}")
                .parse()
                .expect("addr"),
        );
        let mut h = Harness::new(&cfg);
        let now = h.clock.0;
        assert!(
            matches!(h.mgr.poll(now).as_slice(), [Action::Dial { peer, .. }] if *peer == persistent)
        );
        // It connects inbound instead; fill the rest of the inbound slots from one group.
        let c = h.conn();
        h.mgr.on_established(
            c,
            persistent,
            Direction::Inbound,
            &ip_addr(10, 9, 0, 1),
            now,
            UnixTime(1),
        );
        for i in 0..10 {
            // Accepted, accepted with an eviction, or refused once all are protected.
            let _ = h.inbound(ip_addr(10, 66, 0, i));
        }
        assert!(h.mgr.is_connected(&persistent));
    }

    #[test]
    fn outbound_peers_are_never_evicted() {
        let cfg = config(2, 4, 2);
        let mut h = Harness::new(&cfg);
        let out1 = h.outbound(ip_addr(10, 1, 0, 1));
        let out2 = h.outbound(ip_addr(10, 2, 0, 1));
        for i in 0..20 {
            let _ = h.inbound(ip_addr(10, 66, 0, i));
        }
        h.settle();
        assert!(h.mgr.is_connected(&out1) && h.mgr.is_connected(&out2));
        assert_eq!(h.mgr.count(Direction::Inbound), 2);
    }

    #[test]
    fn flood_from_one_group_does_not_evict_protected_or_diverse_peers() {
        // With probation (a DHT server) and without, the outcome is the same.
        for dht_server in [false, true] {
            // 20 inbound slots; 12 honest peers in distinct groups, some useful, one high score.
            let cfg = config(0, 20, 0);
            let mut h = Harness::new(&cfg);
            h.mgr.set_dht_server(dht_server);
            let honest: Vec<PeerId> = (0..12).map(|i| h.inbound(ip_addr(10, i, 0, 1)).0).collect();
            h.mgr.mark_useful(honest[3], h.clock.0);
            h.mgr.set_score(honest[7], Score(100));
            h.mgr.on_ping(honest[9], Duration::from_millis(1));
            // 40 inbound from one /16 group.
            let mut evicted_attackers = 0;
            for i in 0..40 {
                let (_, verdict) = h.inbound(ip_addr(66, 66, 0, i));
                if let Ok(actions) = verdict {
                    evicted_attackers += actions.len();
                }
            }
            assert!(
                h.mgr.count(Direction::Inbound) <= 20 + PROBATION_SLOTS,
                "probation is bounded"
            );
            h.settle();
            for p in &honest {
                assert!(h.mgr.is_connected(p), "honest peer {p} was evicted");
            }
            assert_eq!(h.mgr.count(Direction::Inbound), 20);
            assert!(
                evicted_attackers > 0,
                "the flood evicted its own connections"
            );
        }
    }

    #[test]
    fn victim_is_youngest_of_most_crowded_unprotected_group() {
        let t0 = Instant::now();
        let mk = |i: u64, group: [u8; 2]| EvictionCandidate {
            peer: PeerId::random(),
            group: Some(IpGroup::V4(group)),
            connected_at: t0 + Duration::from_secs(i),
            score: Score(0),
            latency: Some(Duration::from_millis(50)),
            last_useful: None,
        };
        // 30 peers: 15 alone in their group (oldest), 5 in [2,2], the 10 youngest in [1,1].
        let mut cands = Vec::new();
        for i in 0..30u64 {
            let group = match i {
                0..15 => [3, i as u8],
                15..20 => [2, 2],
                _ => [1, 1],
            };
            cands.push(mk(i, group));
        }
        let victim = select_eviction_victim(&cands).expect("someone unprotected");
        assert_eq!(victim, cands[29].peer, "youngest of the most crowded group");
        // At most three quarters are protected: of four lone peers, the youngest goes.
        assert_eq!(select_eviction_victim(&cands[..4]), Some(cands[3].peer));
        assert_eq!(select_eviction_victim(&[]), None);
    }

    #[test]
    fn banned_peers_and_ips_are_refused_until_unbanned() {
        let cfg = config(0, 50, 0);
        let mut m = ConnectionManager::new(PeerId::random(), &cfg, AddressBook::new());
        let peer = PeerId::random();
        let ip: IpAddr = Ipv4Addr::new(203, 0, 113, 9).into();
        assert_eq!(m.ban(peer), (true, Vec::new()));
        assert_eq!(m.check_dial(peer, &[]), Err(Refusal::BannedPeer(peer)));
        assert!(m.unban(&peer));
        assert!(m.check_dial(peer, &[]).is_ok());
        assert!(m.ban_ip(ip));
        let other = PeerId::random();
        assert_eq!(m.check_access(other, Some(ip)), Err(Refusal::BannedIp(ip)));
        assert!(m.unban_ip(&ip));
        assert!(m.check_access(other, Some(ip)).is_ok());
    }

    #[test]
    fn per_ip_limit_and_deny_lists() {
        let mut cfg = config(0, 50, 0);
        cfg.max_inbound_per_ip = 2;
        let denied_peer = PeerId::random();
        cfg.deny_peers.push(denied_peer);
        cfg.deny_cidrs.push("192.0.2.0/24".parse().expect("cidr"));
        let mut h = Harness::new(&cfg);
        let a = ip_addr(10, 0, 0, 1);
        assert!(h.inbound(a.clone()).1.is_ok());
        assert!(h.inbound(a.clone()).1.is_ok());
        assert!(matches!(
            h.inbound(a.clone()).1,
            Err(Refusal::PerIpLimit(_))
        ));
        let ip = ip_of(&ip_addr(192, 0, 2, 7));
        assert!(matches!(
            h.mgr.check_pending_inbound(ip),
            Err(Refusal::DeniedIp(_))
        ));
        assert!(matches!(
            h.mgr.check_established_outbound(denied_peer, None),
            Err(Refusal::DeniedPeer(_))
        ));
        assert!(matches!(
            h.mgr.check_dial(denied_peer, &[]),
            Err(Refusal::DeniedPeer(_))
        ));
        let denied_addr = ip_addr(192, 0, 2, 7);
        let ok_addr = ip_addr(10, 0, 0, 9);
        assert!(matches!(
            h.mgr
                .check_dial(PeerId::random(), std::slice::from_ref(&denied_addr)),
            Err(Refusal::DeniedIp(_))
        ));
        assert!(
            h.mgr
                .check_dial(PeerId::random(), &[denied_addr, ok_addr])
                .is_ok()
        );
    }

    #[test]
    fn allow_list_restricts_to_listed_peers_and_networks() {
        let mut cfg = config(0, 50, 0);
        let friend = PeerId::random();
        cfg.allow_peers.push(friend);
        cfg.allow_cidrs.push("10.5.0.0/16".parse().expect("cidr"));
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, AddressBook::new());
        let outside = ip_of(&ip_addr(10, 6, 0, 1));
        let inside = ip_of(&ip_addr(10, 5, 0, 1));
        assert!(mgr.check_established_inbound(friend, outside).is_ok());
        assert!(
            mgr.check_established_inbound(PeerId::random(), inside)
                .is_ok()
        );
        assert!(matches!(
            mgr.check_established_inbound(PeerId::random(), outside),
            Err(Refusal::NotAllowed(_))
        ));
    }

    #[test]
    fn duplicate_connections_resolve_identically_on_both_ends() {
        let cfg = config(0, 50, 0);
        let a = PeerId::random();
        let b = PeerId::random();
        let mut ma = ConnectionManager::new(a, &cfg, AddressBook::new());
        let mut mb = ConnectionManager::new(b, &cfg, AddressBook::new());
        let now = Instant::now();
        let addr = ip_addr(10, 0, 0, 1);
        // Connection 1 dialled by a, connection 2 dialled by b; each end sees them in a
        // different order.
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        ma.on_established(c1, b, Direction::Outbound, &addr, now, UnixTime(1));
        let ca = ma.on_established(c2, b, Direction::Inbound, &addr, now, UnixTime(1));
        mb.on_established(c1, a, Direction::Inbound, &addr, now, UnixTime(1));
        let cb = mb.on_established(c2, a, Direction::Outbound, &addr, now, UnixTime(1));
        let closed = |v: &[Action]| match v {
            [Action::CloseConnection { connection, .. }] => *connection,
            other => panic!("expected one close, got {other:?}"),
        };
        assert_eq!(
            closed(&ca),
            closed(&cb),
            "both ends close the same connection"
        );
        let kept = if a < b { c1 } else { c2 };
        assert_ne!(closed(&ca), kept);
    }

    #[test]
    fn heartbeat_failure_disconnects_and_is_replaced() {
        let cfg = config(1, 10, 2);
        let mut book = AddressBook::new();
        let spare = PeerId::random();
        book.add(spare, [ip_addr(10, 2, 0, 1)], AddrSource::PeerExchange);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let dead = PeerId::random();
        let now = Instant::now();
        let c = ConnectionId::new_unchecked(1);
        mgr.on_dial_started(dead, now);
        let first = mgr.on_established(
            c,
            dead,
            Direction::Outbound,
            &ip_addr(10, 1, 0, 1),
            now,
            UnixTime(1),
        );
        assert_eq!(
            first,
            vec![Action::RequestAddrs { peer: dead }],
            "asks a new outbound peer for addresses"
        );
        assert!(mgr.poll(now).is_empty(), "at target");
        assert_eq!(
            mgr.on_ping_failure(dead),
            vec![Action::Disconnect {
                peer: dead,
                reason: DisconnectReason::HeartbeatTimeout
            }]
        );
        mgr.on_closed(c, now + SHORT_LIVED_CONNECTION);
        assert!(matches!(mgr.poll(now).as_slice(), [Action::Dial { peer, .. }] if *peer == spare));
    }

    #[test]
    fn peer_that_drops_us_at_once_backs_off_exponentially() {
        let cfg = config(1, 10, 2);
        let mut book = AddressBook::new();
        let p = PeerId::random();
        let addr = ip_addr(10, 0, 0, 1);
        book.add(p, [addr.clone()], AddrSource::PeerExchange);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let mut clock = Clock(Instant::now());
        let mut waits = Vec::new();
        for round in 0..5 {
            let mut waited = 0;
            while !mgr
                .poll(clock.0)
                .iter()
                .any(|a| matches!(a, Action::Dial { .. }))
            {
                waited += 1;
                clock.advance(Duration::from_secs(1));
            }
            waits.push(waited);
            // It accepts, then closes the connection after 100 ms (full, or evicting us).
            let c = ConnectionId::new_unchecked(round);
            mgr.on_established(c, p, Direction::Outbound, &addr, clock.0, UnixTime(1));
            mgr.on_closed(c, clock.advance(Duration::from_millis(100)));
        }
        assert_eq!(waits, [0, 1, 2, 4, 8]);
        // A connection that lasts clears the failures.
        let c = ConnectionId::new_unchecked(99);
        clock.advance(Duration::from_secs(60));
        mgr.poll(clock.0);
        mgr.on_established(c, p, Direction::Outbound, &addr, clock.0, UnixTime(1));
        mgr.poll(clock.advance(SHORT_LIVED_CONNECTION));
        assert_eq!(mgr.book().get(&p).expect("known").failures.0, 0);
    }

    #[test]
    fn anchors_are_current_outbound_peers() {
        let cfg = config(2, 10, 2);
        let mut h = Harness::new(&cfg);
        let out = h.outbound(ip_addr(10, 1, 0, 1));
        h.mgr
            .add_addresses(out, vec![ip_addr(10, 1, 0, 1)], AddrSource::Identify);
        let (inb, _) = h.inbound(ip_addr(10, 2, 0, 1));
        h.mgr
            .add_addresses(inb, vec![ip_addr(10, 2, 0, 1)], AddrSource::Identify);
        let book = AddressBook::decode(&h.mgr.encode_book()).expect("decodes");
        assert!(book.get(&out).expect("kept").anchor);
        assert!(!book.get(&inb).expect("kept").anchor);
    }

    #[test]
    fn ai_quota_dials_ai_capable_peers_even_at_target_and_looks_them_up() {
        let mut cfg = config(1, 10, 3);
        cfg.ai_peer_slots = 2;
        let mut book = AddressBook::new();
        let plain = PeerId::random();
        let ai = PeerId::random();
        book.add(plain, [ip_addr(10, 1, 0, 1)], AddrSource::PeerExchange);
        book.add(ai, [ip_addr(10, 2, 0, 1)], AddrSource::Dht);
        book.set_capabilities(&ai, Capabilities::AI_COMPUTE);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let mut clock = Clock(Instant::now());
        let find = Action::FindCapable {
            capabilities: Capabilities::AI_COMPUTE,
        };
        let actions = mgr.poll(clock.0);
        assert!(
            actions.contains(&find),
            "one AI candidate for two slots: look up more"
        );
        let dialled: Vec<PeerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(
            dialled,
            vec![ai],
            "the AI peer also fills the outbound target"
        );
        let c = ConnectionId::new_unchecked(1);
        mgr.on_established(
            c,
            ai,
            Direction::Outbound,
            &ip_addr(10, 2, 0, 1),
            clock.0,
            UnixTime(1),
        );
        // At the outbound target, one AI slot open, no candidate, lookup not due yet.
        assert!(mgr.poll(clock.advance(Duration::from_secs(1))).is_empty());
        // A lookup found another AI-capable peer: dialled although the target is met.
        let ai2 = PeerId::random();
        mgr.add_addresses(ai2, vec![ip_addr(10, 3, 0, 1)], AddrSource::Dht);
        mgr.note_capabilities(ai2, Capabilities::AI_COMPUTE);
        assert!(matches!(
            mgr.poll(clock.advance(Duration::from_secs(1))).as_slice(),
            [Action::Dial { peer, .. }] if *peer == ai2
        ));
        mgr.on_dial_failure(ai2, &[], clock.0);
        mgr.forget(&ai2);
        // With nobody left to dial, lookups back off: 2 s after the first, then 4 s.
        assert_eq!(
            mgr.poll(clock.advance(CAPABILITY_LOOKUP_MIN_INTERVAL)),
            vec![find.clone()]
        );
        assert!(
            mgr.poll(clock.advance(CAPABILITY_LOOKUP_MIN_INTERVAL))
                .is_empty()
        );
        assert_eq!(
            mgr.poll(clock.advance(CAPABILITY_LOOKUP_MIN_INTERVAL)),
            vec![find]
        );
    }

    /// Inbound slots for four; two non-AI peers, then two AI-capable ones (the youngest, so
    /// the first to go without protection), all in one IP group.
    fn full_with_ai_peers(ai_peer_slots: usize) -> (Harness, Vec<PeerId>) {
        let mut cfg = config(0, 6, 2);
        cfg.ai_peer_slots = ai_peer_slots;
        let mut h = Harness::new(&cfg);
        for i in 0..2 {
            assert!(h.inbound(ip_addr(10, 7, 0, i)).1.is_ok());
        }
        let mut ai = Vec::new();
        for i in 2..4 {
            let (peer, verdict) = h.inbound(ip_addr(10, 7, 0, i));
            assert!(verdict.is_ok());
            h.mgr.on_identified(peer, Capabilities::AI_COMPUTE);
            ai.push(peer);
        }
        (h, ai)
    }

    #[test]
    fn eviction_protects_ai_capable_peers_up_to_the_quota() {
        // Without the quota the youngest AI peer is the one to go; with it, someone else.
        let (h, ai) = full_with_ai_peers(0);
        assert_eq!(h.mgr.pick_victim(), Some(ai[1]));
        let (mut h, ai) = full_with_ai_peers(2);
        let victim = h.mgr.pick_victim().expect("someone unprotected");
        assert!(!ai.contains(&victim));
        // A flood from the same group, settled, leaves them connected.
        for i in 10..40 {
            let _ = h.inbound(ip_addr(10, 7, 0, i));
        }
        h.settle();
        for p in &ai {
            assert!(h.mgr.is_connected(p), "AI peer {p} was evicted");
        }
        assert_eq!(h.mgr.count(Direction::Inbound), 4);
        let info = h.mgr.peers();
        assert!(
            info.iter()
                .filter(|i| ai.contains(&i.peer))
                .all(|i| i.capabilities == Capabilities::AI_COMPUTE)
        );
    }

    #[test]
    fn inbound_beyond_the_slots_waits_on_probation_before_anyone_is_evicted() {
        let cfg = config(0, 4, 0);
        let mut h = Harness::new(&cfg);
        h.mgr.set_dht_server(true);
        let settled: Vec<PeerId> = (0..4).map(|i| h.inbound(ip_addr(10, i, 0, 1)).0).collect();
        // A lookup's connection: accepted without evicting anyone, gone within probation.
        let (lookup, verdict) = h.inbound(ip_addr(10, 9, 0, 1));
        assert_eq!(verdict, Ok(Vec::new()), "nobody evicted for it");
        let almost = h.clock.advance(PROBATION_PERIOD - Duration::from_secs(2));
        assert!(h.mgr.poll(almost).is_empty());
        h.close_peer(lookup);
        h.settle();
        assert!(settled.iter().all(|p| h.mgr.is_connected(p)));
        // One that stays: after probation someone makes room.
        assert!(h.inbound(ip_addr(10, 9, 0, 2)).1.is_ok());
        assert_eq!(h.mgr.count(Direction::Inbound), 5);
        h.settle();
        assert_eq!(h.mgr.count(Direction::Inbound), 4);
    }

    #[test]
    fn connections_a_lookup_opened_are_adopted_below_target_ai_first() {
        let mut cfg = config(2, 20, 3);
        cfg.ai_peer_slots = 1;
        let mut h = Harness::new(&cfg);
        // One peer we dialled ourselves.
        let ours = PeerId::random();
        h.mgr.on_dial_started(ours, h.clock.0);
        assert!(h.mgr.wants(&ours), "a dial of ours is kept alive");
        let c = h.conn();
        let now = h.clock.advance(Duration::from_secs(1));
        h.mgr.on_established(
            c,
            ours,
            Direction::Outbound,
            &ip_addr(10, 1, 0, 1),
            now,
            UnixTime(1),
        );
        // Three that a DHT lookup dialled, one of them AI-capable.
        let lookup: Vec<PeerId> = (5..8).map(|i| h.outbound(ip_addr(10, i, 0, 1))).collect();
        h.mgr.on_identified(lookup[0], Capabilities::AI_COMPUTE);
        assert!(
            lookup.iter().all(|p| !h.mgr.wants(p)),
            "idle ones may close"
        );
        assert!(h.mgr.below_target(), "only our own dials count");
        // One short of the target and of the AI quota: the AI peer is adopted, which meets
        // both, and nothing new is dialled.
        let actions = h.mgr.poll(h.clock.0);
        assert_eq!(
            actions,
            vec![Action::Keep {
                peer: lookup[0],
                connection: ConnectionId::new_unchecked(h.next_conn - 2),
            }]
        );
        assert!(h.mgr.wants(&lookup[0]) && !h.mgr.wants(&lookup[1]));
        assert!(!h.mgr.below_target());
        // A lookup's connection closing soon is not the peer's failure.
        h.mgr
            .add_addresses(lookup[1], vec![ip_addr(10, 6, 0, 1)], AddrSource::Dht);
        h.close_peer(lookup[1]);
        assert_eq!(h.mgr.book().get(&lookup[1]).expect("known").failures.0, 0);
        // One that something keeps busy is closed at its maximum age; the adopted one stays.
        let actions = h.mgr.poll(h.clock.advance(DISCOVERY_CONNECTION_MAX_AGE));
        assert_eq!(
            actions,
            vec![Action::Disconnect {
                peer: lookup[2],
                reason: DisconnectReason::Unrequested,
            }]
        );
    }

    #[test]
    fn bootstrap_nodes_come_first_while_isolated() {
        let mut cfg = config(1, 10, 2);
        let boot = PeerId::random();
        cfg.bootstrap.push(
            format!("/dns4/boot.example.org/udp/1/quic-v1/p2p/{boot}")
                .parse()
                .expect("addr"),
        );
        let mut book = AddressBook::new();
        for i in 0..5 {
            let p = PeerId::random();
            let a = ip_addr(10, i, 0, 1);
            book.add(p, [a.clone()], AddrSource::PeerExchange);
            book.record_connected(&p, Some(&a), UnixTime(100));
        }
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let now = Instant::now();
        assert!(matches!(
            mgr.poll(now).as_slice(),
            [Action::Dial { peer, addrs }] if *peer == boot && addrs[0].to_string().starts_with("/dns4/")
        ));
        // It failed: during its backoff another candidate is tried...
        mgr.on_dial_failure(boot, &[], now);
        let t = now + Duration::from_millis(500);
        let other = match mgr.poll(t).as_slice() {
            [Action::Dial { peer, .. }] if *peer != boot => *peer,
            other => panic!("expected one dial of another peer, got {other:?}"),
        };
        mgr.on_dial_failure(other, &[], t);
        // ...and once the backoff is over it comes first again while the node is isolated.
        let t = now + Duration::from_secs(1);
        assert!(matches!(mgr.poll(t).as_slice(), [Action::Dial { peer, .. }] if *peer == boot));
    }

    #[test]
    fn local_addresses_from_peers_are_dropped_unless_allowed() {
        let mut cfg = config(1, 10, 2);
        cfg.allow_local_addresses = false;
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, AddressBook::new());
        let p = PeerId::random();
        mgr.add_addresses(
            p,
            vec!["/ip4/127.0.0.1/tcp/1".parse().expect("addr")],
            AddrSource::Identify,
        );
        assert!(mgr.book().get(&p).is_none());
        mgr.add_addresses(
            p,
            vec!["/ip4/127.0.0.1/tcp/1".parse().expect("addr")],
            AddrSource::Manual,
        );
        assert!(mgr.book().get(&p).is_some());
        // mDNS announcements are local by nature.
        let q = PeerId::random();
        mgr.add_addresses(
            q,
            vec!["/ip4/192.168.1.7/udp/1/quic-v1".parse().expect("addr")],
            AddrSource::Mdns,
        );
        assert!(mgr.book().get(&q).is_some());
    }

    /// Peers dialled by `actions`.
    fn dialled(actions: &[Action]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dial { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_redial_dials_known_peers_past_the_backoffs_and_keeps_the_failure_counts() {
        let cfg = config(3, 10, 4);
        let mut book = AddressBook::new();
        let peers: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        let addrs: Vec<Multiaddr> = (0..2).map(|i| ip_addr(10, i, 0, 1)).collect();
        for (p, a) in peers.iter().zip(&addrs) {
            book.add(*p, [a.clone()], AddrSource::PeerExchange);
            // Peers we were connected to before the split.
            book.record_connected(p, Some(a), UnixTime(1));
        }
        // And one we never reached.
        let stranger = PeerId::random();
        let stranger_addr = ip_addr(10, 99, 0, 1);
        book.add(stranger, [stranger_addr.clone()], AddrSource::Dht);
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let mut clock = Clock(Instant::now());
        // A split: every dial fails, five times over, so each address backs off for 16 s.
        for _ in 0..5 {
            let now = clock.advance(Duration::from_secs(60));
            let round = dialled(&mgr.poll(now));
            assert_eq!(round.len(), 3);
            for peer in round {
                let addr = match peers.iter().position(|p| *p == peer) {
                    Some(i) => &addrs[i],
                    None => &stranger_addr,
                };
                mgr.on_dial_failure(peer, std::slice::from_ref(addr), now);
            }
        }
        // The split heals a second later: the backoffs hold the ordinary poll back...
        let now = clock.advance(Duration::from_secs(1));
        assert_eq!(dialled(&mgr.poll(now)), vec![]);
        // ...the redial does not, for the peers we knew (the stranger keeps its backoff).
        let mut redial = dialled(&mgr.redial(now));
        redial.sort();
        let mut want = peers.clone();
        want.sort();
        assert_eq!(redial, want);
        // No second round: the dials in flight count, and the stranger still backs off.
        assert_eq!(dialled(&mgr.redial(now)), vec![]);
        // A redial that fails again backs off further than before (32 s, not 1 s).
        for peer in &redial {
            let i = peers.iter().position(|p| p == peer).expect("a book peer");
            mgr.on_dial_failure(*peer, std::slice::from_ref(&addrs[i]), now);
        }
        let record = mgr.book().get(&redial[0]).expect("known");
        assert_eq!(record.failures.0, 6);
        let later = clock.advance(Duration::from_secs(20));
        assert!(
            !dialled(&mgr.poll(later)).iter().any(|p| redial.contains(p)),
            "still backing off"
        );
    }

    #[test]
    fn a_redial_at_the_target_dials_nobody() {
        let cfg = config(1, 10, 4);
        let mut book = AddressBook::new();
        let spare = PeerId::random();
        book.add(spare, [ip_addr(10, 9, 0, 1)], AddrSource::PeerExchange);
        let mut h = Harness::new(&cfg);
        h.mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let p = PeerId::random();
        let now = h.clock.0;
        h.mgr.on_dial_started(p, now);
        let c = h.conn();
        h.mgr.on_established(
            c,
            p,
            Direction::Outbound,
            &ip_addr(10, 1, 0, 1),
            now,
            UnixTime(1),
        );
        assert_eq!(dialled(&h.mgr.redial(now)), vec![]);
    }

    /// A manager with `n` outbound peers we dialled (their ids in connection order) and two
    /// spare peers in the book.
    fn at_target(n: usize) -> (Harness, Vec<PeerId>, Vec<PeerId>) {
        let cfg = config(n, 20, n + 2);
        let mut book = AddressBook::new();
        let spares: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        for (i, p) in spares.iter().enumerate() {
            book.add(
                *p,
                [ip_addr(10, 200 + i as u8, 0, 1)],
                AddrSource::PeerExchange,
            );
        }
        let mut h = Harness::new(&cfg);
        h.mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        let mut out = Vec::new();
        for i in 0..n {
            let p = PeerId::random();
            let now = h.clock.advance(Duration::from_secs(1));
            h.mgr.on_dial_started(p, now);
            let c = h.conn();
            h.mgr.on_established(
                c,
                p,
                Direction::Outbound,
                &ip_addr(10, i as u8, 0, 1),
                now,
                UnixTime(1),
            );
            out.push(p);
        }
        (h, out, spares)
    }

    #[test]
    fn the_extra_outbound_slot_dials_one_more_peer_and_closing_it_drops_the_least_useful() {
        let (mut h, outbound, spares) = at_target(3);
        let now = h.clock.advance(Duration::from_secs(1));
        assert_eq!(dialled(&h.mgr.poll(now)), vec![], "at target");
        assert!(h.mgr.set_extra_outbound(true).is_empty());
        assert!(h.mgr.extra_outbound());
        let extra = dialled(&h.mgr.poll(now));
        assert_eq!(extra.len(), 1, "exactly one more peer");
        assert!(spares.contains(&extra[0]));
        let c = h.conn();
        h.mgr.on_established(
            c,
            extra[0],
            Direction::Outbound,
            &ip_addr(10, 250, 0, 1),
            now,
            UnixTime(1),
        );
        assert!(!h.mgr.below_target());
        assert_eq!(dialled(&h.mgr.poll(now)), vec![], "one extra, not more");
        // The newcomer brings blocks; of the old peers, the second did most recently, the
        // first and third longer ago.
        let t = h.clock.advance(Duration::from_secs(5));
        h.mgr.mark_useful(outbound[0], t);
        h.mgr.mark_useful(outbound[2], t);
        h.mgr
            .mark_useful(outbound[1], h.clock.advance(Duration::from_secs(1)));
        h.mgr
            .mark_useful(extra[0], h.clock.advance(Duration::from_secs(1)));
        // Closing the slot drops the least recently useful: of the first and the third (same
        // time), the younger connection.
        assert_eq!(
            h.mgr.set_extra_outbound(false),
            vec![Action::Disconnect {
                peer: outbound[2],
                reason: DisconnectReason::ExtraOutboundClosed,
            }]
        );
        assert!(!h.mgr.extra_outbound());
        h.close_peer(outbound[2]);
        let now = h.clock.advance(Duration::from_secs(1));
        assert_eq!(dialled(&h.mgr.poll(now)), vec![], "back at the target");
    }

    #[test]
    fn closing_an_unused_extra_slot_disconnects_nobody() {
        let (mut h, _, _) = at_target(2);
        assert!(h.mgr.set_extra_outbound(true).is_empty());
        // The extra dial never connected (the split is still on).
        let now = h.clock.advance(Duration::from_secs(1));
        assert_eq!(dialled(&h.mgr.poll(now)).len(), 1);
        assert!(h.mgr.set_extra_outbound(false).is_empty());
    }

    #[test]
    fn no_outbound_target_means_no_extra_slot() {
        let cfg = config(0, 10, 2);
        let mut book = AddressBook::new();
        book.add(
            PeerId::random(),
            [ip_addr(10, 1, 0, 1)],
            AddrSource::PeerExchange,
        );
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, book);
        mgr.set_extra_outbound(true);
        assert_eq!(dialled(&mgr.poll(Instant::now())), vec![]);
    }

    #[test]
    fn persistent_peers_never_leave_when_the_extra_slot_closes() {
        let mut cfg = config(1, 10, 3);
        let persistent = PeerId::random();
        cfg.persistent_peers = vec![
            format!("/ip4/10.7.0.1/udp/1/quic-v1/p2p/{persistent}")
                .parse()
                .expect("addr"),
        ];
        let mut mgr = ConnectionManager::new(PeerId::random(), &cfg, AddressBook::new());
        let now = Instant::now();
        mgr.set_extra_outbound(true);
        // The persistent peer (never useful) and a useful dialled one.
        let other = PeerId::random();
        mgr.on_dial_started(other, now);
        for (i, p) in [persistent, other].into_iter().enumerate() {
            mgr.on_established(
                ConnectionId::new_unchecked(i + 1),
                p,
                Direction::Outbound,
                &ip_addr(10, 7 + i as u8, 0, 1),
                now,
                UnixTime(1),
            );
        }
        mgr.mark_useful(other, now);
        assert_eq!(
            mgr.set_extra_outbound(false),
            vec![Action::Disconnect {
                peer: other,
                reason: DisconnectReason::ExtraOutboundClosed,
            }]
        );
    }
}
