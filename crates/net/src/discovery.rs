//! Discovery: how a node finds peers nobody told it about, and which peers offer what.
//!
//! Four sources feed one [`crate::AddressBook`], and the [`crate::ConnectionManager`] dials from
//! it whatever the source:
//!
//! ```text
//!   mDNS (LAN multicast) ───────────────────────────────▶ book (source Mdns)
//!   bootstrap nodes (config, /dns4/ allowed) ───────────▶ book (source Bootstrap) ─┐
//!   identify (listen addrs, protocols, agent + caps) ───▶ book (source Identify)    │ dials
//!        │  peer runs the DHT and the address is the one it connects from          ▼
//!        └────▶ DiversityFilter ──▶ Kademlia table ──▶ random walks, provider lookups
//!                                                       │
//!                                                       └──▶ book (source Dht, capabilities)
//!   peer exchange (/addr/1: verified addresses only) ───▶ book (source PeerExchange)
//! ```
//!
//! The DHT is Kademlia on `/playergold/<network>/kad/1.0.0` (never the public IPFS DHT) with
//! manual bucket inserts: every routing-table entry passes the [`DiversityFilter`]. Nodes serve
//! the DHT only when reachable (see [`DhtMode`]). A [`DiscoveryScheduler`] (sans-IO, time passed
//! in) decides when to walk the DHT for new peers and when to (re-)announce our capabilities.
//!
//! Capabilities travel two ways. Identify's agent version carries them (see [`agent_version`]),
//! so every connected peer's set is known after its identify message. And a node announcing
//! `ai-compute` or `archive` ([`ANNOUNCED_CAPABILITIES`]) publishes a Kademlia provider record
//! under [`capability_key`], so [`crate::NetworkHandle::find_peers_with`] finds such nodes
//! without being connected to them. Validators are deliberately not announced: a public list
//! of block producers is a list of targets.
//!
//! [`DiversityFilter`]: crate::diversity::DiversityFilter
//! [`DhtMode`]: crate::config::DhtMode

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, RecordKey, RoutingUpdate};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use playergold_protocol::Capabilities;

use crate::addrbook::ip_of;
use crate::config::DhtMode;
use crate::diversity::{DiversityFilter, DiversityRefusal};
use crate::protocol::{NetworkName, ProtocolError, protocol_name};

/// Protocol name part of the DHT.
pub const KAD_PROTOCOL: &str = "kad";
/// Version part of the DHT protocol.
pub const KAD_VERSION: &str = "1.0.0";

/// Period of Kademlia's own bootstrap (a lookup of our id, then of a random key per bucket).
/// Ten minutes is IPFS's routing-table refresh period. One bootstrap is about eight lookups of
/// a few dozen requests, each to a peer that is rarely connected already, so at libp2p's five
/// minutes it would be the largest share of a node's background connections; the table stays
/// fresh anyway because every identified peer is offered to it.
pub const DHT_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Period of our random walks (a lookup of a random id; the peers found go to the address
/// book) while the book has enough candidates: every five minutes keeps it fresh. A lookup
/// costs a few dozen messages and dials the peers it asks, so walking more often only churns
/// connections (identify already fills the book from every peer a lookup touches).
pub const DHT_RANDOM_WALK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Period of random walks while the connection manager is short of candidates to dial: it
/// needs them now.
pub const DHT_FAST_WALK_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a DHT lookup runs. Lookups take a few round trips; 30 s covers slow peers and
/// timeouts along the way.
pub const DHT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lifetime of a capability provider record at the nodes storing it: three republish periods,
/// so a node that went away disappears from lookups within half an hour.
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(30 * 60);

/// Period of capability announcements once established (see [`PROVIDER_RECORD_TTL`]).
pub const CAPABILITY_REPUBLISH_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// First re-announcement after the first one; the delay then doubles up to
/// [`CAPABILITY_REPUBLISH_INTERVAL`]. A new node knows few peers, so its first announcement
/// reaches few of the nodes closest to the key; quick re-announcements fix that as its table
/// grows.
pub const CAPABILITY_FIRST_REPUBLISH: Duration = Duration::from_secs(5);

/// Providers stored per capability key: lookups merge the sets of the ~20 nodes closest to the
/// key, so 64 per node lets a lookup return [`MAX_CAPABLE_PEERS`] while bounding memory.
pub const MAX_PROVIDERS_PER_KEY: usize = 64;

/// Keys we provide ourselves: one per capability, with room for new capabilities.
pub const MAX_PROVIDED_KEYS: usize = 8;

/// Records the store would hold. We never store DHT records (only provider records), and
/// refuse every `PUT_VALUE`, so the store is sized for nothing more than libp2p needs.
pub const MAX_DHT_RECORDS: usize = 1;

/// Most peers [`crate::NetworkHandle::find_peers_with`] returns: enough to fill every
/// outbound slot several times, small enough to answer in one message.
pub const MAX_CAPABLE_PEERS: usize = 64;

/// Longest [`crate::NetworkHandle::find_peers_with`] and
/// [`crate::NetworkHandle::closest_peers`] wait for the DHT before answering with what they
/// have.
pub const FIND_PEERS_TIMEOUT: Duration = Duration::from_secs(15);

/// Lookups started on behalf of callers at once; more are refused (busy) rather than queued.
pub const MAX_PENDING_LOOKUPS: usize = 16;

/// Lookups resolving the addresses of providers we found but cannot dial yet: a provider
/// lookup returns only peer ids, so each needs a lookup of its own before it can be dialled.
pub const MAX_PROVIDER_RESOLVES: usize = 8;

/// Capabilities announced as DHT provider records (see the module documentation).
pub const ANNOUNCED_CAPABILITIES: [Capabilities; 2] =
    [Capabilities::AI_COMPUTE, Capabilities::ARCHIVE];

/// How long an mDNS announcement stays valid; libp2p's default (6 minutes).
pub const MDNS_TTL: Duration = Duration::from_secs(6 * 60);

/// How often mDNS asks the network for peers once started (it probes quickly at start and
/// every announcement it hears resets the timer); libp2p's default, 5 minutes, keeps multicast
/// traffic negligible on a busy LAN.
pub const MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Consecutive failed dials (the address book's count) after which a peer leaves the DHT
/// routing table: three rules out a blip while keeping dead entries from misleading lookups
/// for long.
pub const DHT_EVICT_AFTER_FAILURES: u32 = 3;

/// How often the diversity filter is rebuilt from the routing table (see
/// [`DiversityFilter::resync`]).
pub const ROUTING_TABLE_RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Prefix of the capability list in our identify agent version.
const CAPS_PREFIX: &str = "caps=";

/// The DHT protocol id of `network`: `/playergold/<network>/kad/1.0.0`.
pub fn kad_protocol(network: &NetworkName) -> Result<StreamProtocol, ProtocolError> {
    protocol_name(network, KAD_PROTOCOL, KAD_VERSION)
}

/// The DHT key under which nodes with `capability` (a single one) announce themselves:
/// `/playergold/<network>/cap/<name>`; Kademlia places it by its SHA-256 like any key.
pub fn capability_key(network: &NetworkName, capability: Capabilities) -> Option<RecordKey> {
    match capability.names().as_slice() {
        [name] if Capabilities::parse(name) == Some(capability) => {
            Some(RecordKey::new(&format!("/playergold/{network}/cap/{name}")))
        }
        _ => None,
    }
}

/// Our identify agent version: `playergold/<version> (caps=ai-compute,archive)`, or without
/// the parenthesis when we offer nothing. Identify has no field for capabilities and its
/// protocol list is derived from the protocols we serve, so the agent string carries them.
pub fn agent_version(capabilities: Capabilities) -> String {
    let base = format!("playergold/{}", env!("CARGO_PKG_VERSION"));
    if capabilities == Capabilities::NONE {
        base
    } else {
        format!("{base} ({CAPS_PREFIX}{capabilities})")
    }
}

/// The capabilities in a peer's agent version (see [`agent_version`]). Names we do not know
/// (a newer peer's) are ignored; a missing or malformed list means none.
pub fn capabilities_from_agent(agent: &str) -> Capabilities {
    let Some(start) = agent.find(&format!("({CAPS_PREFIX}")) else {
        return Capabilities::NONE;
    };
    let rest = &agent[start + 1 + CAPS_PREFIX.len()..];
    let Some(list) = rest.split(')').next() else {
        return Capabilities::NONE;
    };
    list.split(',')
        .filter_map(Capabilities::parse)
        .fold(Capabilities::NONE, Capabilities::with)
}

/// A peer with a capability, as returned by [`crate::NetworkHandle::find_peers_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapablePeer {
    /// The peer.
    pub peer: PeerId,
    /// Everything it is known to offer (at least the capability asked for).
    pub capabilities: Capabilities,
    /// Whether it is connected now.
    pub connected: bool,
    /// Addresses the address book knows for it (empty until its addresses are resolved).
    pub addrs: Vec<Multiaddr>,
}

/// The DHT as seen by [`crate::NetworkHandle::dht_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhtStatus {
    /// Whether the DHT runs at all.
    pub enabled: bool,
    /// Whether we serve it to others (server mode).
    pub server: bool,
    /// Peers in the routing table.
    pub routing_table: usize,
}

/// What the [`DiscoveryScheduler`] wants done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryAction {
    /// Look up a random id and put the peers found in the address book.
    RandomWalk,
    /// (Re-)announce our capabilities as provider records.
    Announce,
}

/// When to walk the DHT and when to announce our capabilities (sans-IO, time passed in).
///
/// Nothing happens while the routing table is empty (a lookup could not start). Random walks
/// run every [`DHT_FAST_WALK_INTERVAL`] while the connection manager is short of candidates,
/// else every [`DHT_RANDOM_WALK_INTERVAL`] (the first one period after start). Announcements start as soon as the table has an entry, then
/// repeat after [`CAPABILITY_FIRST_REPUBLISH`], doubling up to
/// [`CAPABILITY_REPUBLISH_INTERVAL`].
#[derive(Debug)]
pub struct DiscoveryScheduler {
    announce: bool,
    last_walk: Option<Instant>,
    next_announce: Option<Instant>,
    announce_delay: Duration,
}

impl DiscoveryScheduler {
    /// A scheduler started at `now`; `announce` when the node has capabilities to announce.
    /// The first slow walk is due one period after `now`: at start Kademlia's own bootstrap
    /// explores the network as soon as the table has an entry.
    pub fn new(now: Instant, announce: bool) -> Self {
        Self {
            announce,
            last_walk: Some(now),
            next_announce: None,
            announce_delay: CAPABILITY_FIRST_REPUBLISH,
        }
    }

    /// What to do at `now`, given the routing table's size and whether the connection manager
    /// is short of candidates to dial.
    pub fn poll(
        &mut self,
        now: Instant,
        table_entries: usize,
        short_of_candidates: bool,
    ) -> Vec<DiscoveryAction> {
        let mut out = Vec::new();
        if table_entries == 0 {
            return out;
        }
        let period = if short_of_candidates {
            DHT_FAST_WALK_INTERVAL
        } else {
            DHT_RANDOM_WALK_INTERVAL
        };
        if self
            .last_walk
            .is_none_or(|t| now.saturating_duration_since(t) >= period)
        {
            self.last_walk = Some(now);
            out.push(DiscoveryAction::RandomWalk);
        }
        if self.announce && self.next_announce.is_none_or(|t| now >= t) {
            out.push(DiscoveryAction::Announce);
            self.next_announce = Some(now + self.announce_delay);
            self.announce_delay = (self.announce_delay * 2).min(CAPABILITY_REPUBLISH_INTERVAL);
        }
        out
    }
}

/// Builds the Kademlia behaviour of `local` for `network` (see the module documentation).
pub(crate) fn build_kad(
    network: &NetworkName,
    local: PeerId,
    mode: DhtMode,
) -> Result<kad::Behaviour<MemoryStore>, ProtocolError> {
    let mut cfg = kad::Config::new(kad_protocol(network)?);
    cfg.set_kbucket_inserts(kad::BucketInserts::Manual)
        // Provider records are checked (key and sender) before they are stored; records are
        // refused outright.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_periodic_bootstrap_interval(Some(DHT_BOOTSTRAP_INTERVAL))
        .set_query_timeout(DHT_QUERY_TIMEOUT)
        .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
        // We republish on our own schedule (`DiscoveryScheduler`).
        .set_provider_publication_interval(None)
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_caching(kad::Caching::Disabled);
    let store = MemoryStore::with_config(
        local,
        MemoryStoreConfig {
            max_records: MAX_DHT_RECORDS,
            max_value_bytes: 0,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            max_provided_keys: MAX_PROVIDED_KEYS,
        },
    );
    let mut kad = kad::Behaviour::with_config(local, store, cfg);
    kad.set_mode(match mode {
        DhtMode::Auto => None,
        DhtMode::Server => Some(kad::Mode::Server),
        DhtMode::Client => Some(kad::Mode::Client),
    });
    Ok(kad)
}

/// Offers `peer` at `addr` to the routing table through the diversity filter, and records
/// Kademlia's answer in the filter. Returns Kademlia's answer, or why the filter refused.
///
/// A new peer whose bucket is full is not offered at all (`Failed`): Kademlia would queue it
/// as pending and dial the bucket's least recently seen peer to check it is alive, and since
/// lookup connections close within seconds there is always such a peer; each check that
/// succeeds drops the pending entry, so the next offer dials again, and the whole network
/// ends up dialling itself in circles. Old entries are what Kademlia prefers anyway; dead ones
/// leave through [`remove_unreachable`].
pub(crate) fn offer_to_table(
    filter: &mut DiversityFilter,
    kad: &mut kad::Behaviour<MemoryStore>,
    peer: PeerId,
    addr: Multiaddr,
    now: Instant,
) -> Result<RoutingUpdate, DiversityRefusal> {
    let ip: IpAddr = ip_of(&addr).ok_or(DiversityRefusal::NotAnIpAddress)?;
    filter.check(peer, ip)?;
    if !filter.contains(&peer)
        && kad
            .kbucket(peer)
            .is_some_and(|b| b.num_entries() >= kad::K_VALUE.get())
    {
        return Ok(RoutingUpdate::Failed);
    }
    let update = kad.add_address(&peer, addr);
    match update {
        RoutingUpdate::Success => filter.insert(peer, ip, None),
        RoutingUpdate::Pending => filter.insert(peer, ip, Some(now)),
        RoutingUpdate::Failed => {}
    }
    Ok(update)
}

/// Removes `peer` from the routing table (it failed [`DHT_EVICT_AFTER_FAILURES`] dials in a
/// row), making room for a live one.
pub(crate) fn remove_unreachable(
    filter: &mut DiversityFilter,
    kad: &mut kad::Behaviour<MemoryStore>,
    peer: &PeerId,
) {
    if kad.remove_peer(peer).is_some() {
        tracing::debug!(%peer, "removed an unreachable peer from the DHT routing table");
    }
    filter.remove(peer);
}

/// The routing table's entries with the IP of each one's first address, for
/// [`DiversityFilter::resync`].
pub(crate) fn table_entries(
    kad: &mut kad::Behaviour<MemoryStore>,
) -> Vec<(PeerId, Option<IpAddr>)> {
    let mut out = Vec::new();
    for bucket in kad.kbuckets() {
        for entry in bucket.iter() {
            let ip = entry.node.value.iter().find_map(ip_of);
            out.push((*entry.node.key.preimage(), ip));
        }
    }
    out
}

/// Number of peers in the routing table.
pub(crate) fn table_len(kad: &mut kad::Behaviour<MemoryStore>) -> usize {
    kad.kbuckets().map(|b| b.num_entries()).sum()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::diversity::{MAX_PER_SUBNET_PER_BUCKET, MAX_PER_SUBNET_PER_TABLE};

    fn net() -> NetworkName {
        NetworkName::new("unit").expect("valid")
    }

    #[test]
    fn kad_protocol_carries_the_network() {
        let p = kad_protocol(&net()).expect("valid");
        assert_eq!(p.as_ref(), "/playergold/unit/kad/1.0.0");
    }

    #[test]
    fn capabilities_round_trip_through_the_agent_version() {
        let caps = Capabilities::AI_COMPUTE.with(Capabilities::ARCHIVE);
        let agent = agent_version(caps);
        assert!(agent.starts_with("playergold/"), "{agent}");
        assert_eq!(capabilities_from_agent(&agent), caps);
        assert_eq!(
            capabilities_from_agent(&agent_version(Capabilities::NONE)),
            Capabilities::NONE
        );
        assert_eq!(
            capabilities_from_agent("playergold/9.0 (caps=validator,teleport)"),
            Capabilities::VALIDATOR
        );
        assert_eq!(
            capabilities_from_agent("rust-libp2p/0.57"),
            Capabilities::NONE
        );
        assert_eq!(capabilities_from_agent("x (caps="), Capabilities::NONE);
    }

    #[test]
    fn capability_keys_are_per_network_and_single_capability() {
        let a = capability_key(&net(), Capabilities::AI_COMPUTE).expect("one capability");
        let other = NetworkName::new("other").expect("valid");
        assert_ne!(
            Some(a.clone()),
            capability_key(&other, Capabilities::AI_COMPUTE)
        );
        assert_eq!(a.as_ref(), b"/playergold/unit/cap/ai-compute");
        assert!(capability_key(&net(), Capabilities::NONE).is_none());
        assert!(
            capability_key(
                &net(),
                Capabilities::AI_COMPUTE.with(Capabilities::VALIDATOR)
            )
            .is_none()
        );
    }

    #[test]
    fn scheduler_walks_faster_when_short_of_candidates_and_backs_off_announcements() {
        let t0 = Instant::now();
        let mut s = DiscoveryScheduler::new(t0, true);
        assert!(
            s.poll(t0, 0, true).is_empty(),
            "nothing with an empty table"
        );
        // Announce at once; walk only when short of candidates (Kademlia bootstraps anyway).
        assert_eq!(s.poll(t0, 1, false), vec![DiscoveryAction::Announce]);
        let t5 = t0 + DHT_FAST_WALK_INTERVAL;
        assert_eq!(
            s.poll(t5, 1, true),
            vec![DiscoveryAction::RandomWalk, DiscoveryAction::Announce]
        );
        assert!(s.poll(t5 + Duration::from_secs(1), 1, true).is_empty());
        // Enough candidates: the next walk waits for the slow period; announcements back off
        // (the next one 10 s after the second, then 20 s).
        assert!(s.poll(t5 + DHT_FAST_WALK_INTERVAL, 1, false).is_empty());
        let t15 = t5 + CAPABILITY_FIRST_REPUBLISH * 2;
        assert_eq!(s.poll(t15, 1, false), vec![DiscoveryAction::Announce]);
        assert!(
            s.poll(t15 + CAPABILITY_FIRST_REPUBLISH * 3, 1, false)
                .is_empty()
        );
        assert_eq!(
            s.poll(t5 + DHT_RANDOM_WALK_INTERVAL, 1, false),
            vec![DiscoveryAction::RandomWalk, DiscoveryAction::Announce]
        );
        let mut quiet = DiscoveryScheduler::new(t0, false);
        assert!(quiet.poll(t0, 3, false).is_empty());
        assert_eq!(
            quiet.poll(t0 + DHT_RANDOM_WALK_INTERVAL, 3, false),
            vec![DiscoveryAction::RandomWalk]
        );
    }

    /// The issue's case on the real libp2p routing table: 100 public-address peers from one /24
    /// offered to Kademlia through the filter leave at most 2 per bucket and 10 in the table.
    #[test]
    fn real_routing_table_keeps_one_slash24_to_two_per_bucket_and_ten_in_all() {
        let local = PeerId::random();
        let mut kad = build_kad(&net(), local, DhtMode::Server).expect("kad");
        let mut filter = DiversityFilter::new(local, false);
        let now = Instant::now();
        let mut refused = 0;
        for i in 0..100u8 {
            let addr: Multiaddr = format!("/ip4/45.67.89.{i}/udp/30777/quic-v1")
                .parse()
                .expect("addr");
            if offer_to_table(&mut filter, &mut kad, PeerId::random(), addr, now).is_err() {
                refused += 1;
            }
        }
        let mut per_bucket: HashMap<u32, usize> = HashMap::new();
        for (peer, _) in table_entries(&mut kad) {
            *per_bucket
                .entry(filter.bucket_of(peer).expect("not self"))
                .or_default() += 1;
        }
        let total: usize = per_bucket.values().sum();
        assert!(total <= MAX_PER_SUBNET_PER_TABLE, "{total} entries");
        assert!(total > 0, "some entries admitted");
        assert!(
            per_bucket.values().all(|n| *n <= MAX_PER_SUBNET_PER_BUCKET),
            "{per_bucket:?}"
        );
        assert_eq!(total + refused, 100);
        assert_eq!(filter.len(), total);

        // Removing an entry from the table (as Kademlia does when it replaces one) and resyncing
        // frees its slot.
        let (victim, _) = table_entries(&mut kad)[0];
        kad.remove_peer(&victim);
        filter.resync(table_entries(&mut kad), now);
        assert_eq!(filter.len(), total - 1);

        // Other subnets still get in.
        let addr: Multiaddr = "/ip4/98.76.54.32/udp/30777/quic-v1".parse().expect("addr");
        assert!(matches!(
            offer_to_table(&mut filter, &mut kad, PeerId::random(), addr, now),
            Ok(RoutingUpdate::Success)
        ));
        // DNS names cannot be grouped and are refused.
        let dns: Multiaddr = "/dns4/example.org/udp/1/quic-v1".parse().expect("addr");
        assert_eq!(
            offer_to_table(&mut filter, &mut kad, PeerId::random(), dns, now),
            Err(DiversityRefusal::NotAnIpAddress)
        );
    }
}
