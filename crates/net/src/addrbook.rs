//! The address book: what we know about peers we could dial, persisted across restarts.
//!
//! Entries come from any source (bootstrap and persistent peers from the config, manual
//! `connect` calls, identify, peer exchange, the DHT, mDNS); discovery mechanisms only ever call
//! [`AddressBook::add`]. Each record keeps the peer id, up to [`MAX_ADDRS_PER_PEER`] addresses
//! (each with its own source, failure count and backoff deadline, and whether a dial to it ever
//! succeeded), the source, when it was last seen connected, its consecutive dial failures, the
//! capabilities it is known to have and whether it was an outbound *anchor* at the last save.
//!
//! An address a peer told us about is a claim, not a fact: it is *verified* only once one of
//! our dials to it succeeded. Only verified addresses are passed on to other peers (peer
//! exchange), and when the book is full records without a verified address go first. On restart the anchors are dialled first (Bitcoin's anchors), so a node whose last good
//! peers are still up needs no bootstrap node.
//!
//! Persistence goes through the [`AddressBookStore`] trait: the book is encoded with postcard
//! into one blob ([`AddressBook::encode`]); the chain crate stores that blob in its database
//! under [`ADDRESS_BOOK_AUX_KEY`], and tests use [`MemoryStore`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use parking_lot::Mutex;
use playergold_protocol::Capabilities;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Most peers the book remembers. 4096 records of a few hundred bytes each stay well under
/// 2 MiB in memory and on disk, yet hold far more candidates than the 50 peers we connect to.
pub const MAX_ADDRESS_BOOK_ENTRIES: usize = 4096;

/// Most addresses kept per peer. A node has a handful of interfaces times two transports; more
/// than 8 is more likely a peer trying to fill our book than a real node.
pub const MAX_ADDRS_PER_PEER: usize = 8;

/// Largest encoded book accepted from the store: [`MAX_ADDRESS_BOOK_ENTRIES`] records of up to
/// [`MAX_ADDRS_PER_PEER`] addresses fit in well under 8 MiB; anything bigger is corrupt.
pub const MAX_ENCODED_BOOK_BYTES: usize = 8 * 1024 * 1024;

/// Most peers marked as anchors at a save: the outbound peers we redial first on restart.
/// Eight matches the default outbound target, so a restarted node can be back at target from its
/// anchors alone.
pub const MAX_ANCHORS: usize = 8;

/// Key under which the chain database keeps the encoded address book (see
/// `ChainStore::put_aux`).
pub const ADDRESS_BOOK_AUX_KEY: &str = "net/address_book";

/// Format version written in front of the encoded book; an unknown version is ignored (the
/// node starts with an empty book and logs a warning) rather than misread. Version 2 added
/// per-address sources, verification and peer capabilities; version 1 books still load.
const FORMAT_VERSION: u8 = 2;

/// The first format version (no per-address source, verification or capabilities).
const FORMAT_VERSION_1: u8 = 1;

/// Seconds since the Unix epoch (wall clock, for persisted timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }
}

/// Consecutive failed dial attempts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct FailureCount(pub u32);

/// Where an address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AddrSource {
    /// A bootstrap address from the configuration.
    Bootstrap,
    /// A persistent peer from the configuration.
    Persistent,
    /// A manual `connect` call.
    Manual,
    /// The peer's own identify message.
    Identify,
    /// Another peer told us (peer exchange).
    PeerExchange,
    /// A Kademlia DHT lookup returned it.
    Dht,
    /// An mDNS announcement on the local network.
    Mdns,
}

impl AddrSource {
    /// Whether the source is the operator (configuration or manual call) rather than a peer.
    pub fn is_trusted(self) -> bool {
        matches!(self, Self::Bootstrap | Self::Persistent | Self::Manual)
    }

    /// Whether loopback and private addresses from this source are kept even when the network
    /// does not allow local addresses: the operator's own addresses, and mDNS, whose whole
    /// point is the local network (its announcements never leave the link).
    pub fn allows_local(self) -> bool {
        self.is_trusted() || self == Self::Mdns
    }
}

/// One dialable address of a peer, with its own backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    /// The address, without a trailing `/p2p/<peer-id>`.
    pub addr: Multiaddr,
    /// Where we first learned this address (an operator source replaces a peer source).
    pub source: AddrSource,
    /// Whether one of our dials to this address ever succeeded. Unverified addresses are
    /// dialled but never passed on to other peers.
    pub verified: bool,
    /// Consecutive failed dials to this address.
    pub failures: FailureCount,
    /// Not dialled again before this instant (runtime only, not persisted).
    pub retry_at: Option<Instant>,
}

/// What the book knows about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer.
    pub peer: PeerId,
    /// Its addresses, most recently learned last.
    pub addrs: Vec<AddrEntry>,
    /// Where we first learned about it.
    pub source: AddrSource,
    /// Last time we held a connection to it.
    pub last_seen: Option<UnixTime>,
    /// Consecutive dial attempts in which every address failed.
    pub failures: FailureCount,
    /// Whether it was one of our outbound peers at the last save.
    pub anchor: bool,
    /// What the peer is known to offer (its identify message, or a DHT capability lookup).
    pub capabilities: Capabilities,
}

impl PeerRecord {
    /// The addresses a dial of ours has succeeded to.
    pub fn verified_addrs(&self) -> impl Iterator<Item = &Multiaddr> {
        self.addrs.iter().filter(|e| e.verified).map(|e| &e.addr)
    }
}

/// Errors from the address book store and from decoding a stored book.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddrBookError {
    /// The backing store failed.
    #[error("address book store failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The stored bytes are not a valid address book.
    #[error("stored address book is corrupt ({0}); it will be rebuilt from bootstrap peers")]
    Corrupt(String),
}

/// Loads and saves the encoded address book (one opaque blob).
pub trait AddressBookStore: Send + 'static {
    /// Returns the last saved blob, or `None` when nothing was saved yet.
    fn load(&self) -> Result<Option<Vec<u8>>, AddrBookError>;
    /// Replaces the saved blob.
    fn save(&self, bytes: &[u8]) -> Result<(), AddrBookError>;
}

/// An in-memory store; clones share the same blob, so a test can stop a node and start a new one
/// on the same "disk".
#[derive(Clone, Debug, Default)]
pub struct MemoryStore(Arc<Mutex<Option<Vec<u8>>>>);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The blob currently saved, if any.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.0.lock().clone()
    }
}

impl AddressBookStore for MemoryStore {
    fn load(&self) -> Result<Option<Vec<u8>>, AddrBookError> {
        Ok(self.0.lock().clone())
    }

    fn save(&self, bytes: &[u8]) -> Result<(), AddrBookError> {
        *self.0.lock() = Some(bytes.to_vec());
        Ok(())
    }
}

/// A store made of two closures, to adapt any key-value backend, e.g. the chain database:
///
/// ```
/// use playergold_net::addrbook::{ADDRESS_BOOK_AUX_KEY, AddressBookStore, FnStore};
/// # use std::{collections::HashMap, sync::{Arc, Mutex}};
/// # #[derive(Clone, Default)]
/// # struct ChainStore(Arc<Mutex<HashMap<String, Vec<u8>>>>);
/// # impl ChainStore {
/// #     fn get_aux(&self, key: &str) -> Result<Option<Vec<u8>>, std::io::Error> {
/// #         Ok(self.0.lock().expect("lock").get(key).cloned())
/// #     }
/// #     fn put_aux(&self, key: &str, value: &[u8]) -> Result<(), std::io::Error> {
/// #         self.0.lock().expect("lock").insert(key.to_owned(), value.to_vec());
/// #         Ok(())
/// #     }
/// # }
/// let chain = ChainStore::default();
/// let (a, b) = (chain.clone(), chain.clone());
/// let store = FnStore::new(
///     move || a.get_aux(ADDRESS_BOOK_AUX_KEY),
///     move |bytes: &[u8]| b.put_aux(ADDRESS_BOOK_AUX_KEY, bytes),
/// );
/// store.save(b"encoded book").expect("saved");
/// assert_eq!(store.load().expect("loaded").as_deref(), Some(&b"encoded book"[..]));
/// ```
pub struct FnStore<L, S> {
    load: L,
    save: S,
}

impl<L, S> FnStore<L, S> {
    /// Wraps a load and a save closure.
    pub fn new(load: L, save: S) -> Self {
        Self { load, save }
    }
}

impl<L, S, E> AddressBookStore for FnStore<L, S>
where
    L: Fn() -> Result<Option<Vec<u8>>, E> + Send + 'static,
    S: Fn(&[u8]) -> Result<(), E> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    fn load(&self) -> Result<Option<Vec<u8>>, AddrBookError> {
        (self.load)().map_err(|e| AddrBookError::Store(Box::new(e)))
    }

    fn save(&self, bytes: &[u8]) -> Result<(), AddrBookError> {
        (self.save)(bytes).map_err(|e| AddrBookError::Store(Box::new(e)))
    }
}

/// Exponential backoff with jitter for dial retries: the n-th consecutive failure waits
/// `min(initial * 2^(n-1), max)` plus a random extra of up to `jitter_percent` of that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Cap on the wait.
    pub max: Duration,
    /// Random extra wait, in percent of the base wait, so peers that lost the same node do not
    /// all retry at the same instant.
    pub jitter_percent: u8,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        // 1 s doubles to the 10 min cap after 10 failures: quick recovery from a blip, and an
        // address that has been down for long costs one dial per 10 minutes.
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter_percent: 25,
        }
    }
}

impl BackoffConfig {
    /// The wait after `failures` consecutive failures (`failures >= 1`), jittered with `rng`.
    pub fn delay(&self, failures: FailureCount, rng: &mut StdRng) -> Duration {
        let exp = failures.0.saturating_sub(1).min(31);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let jitter_max = base.as_millis() as u64 * u64::from(self.jitter_percent) / 100;
        let jitter = if jitter_max == 0 {
            0
        } else {
            rng.gen_range(0..=jitter_max)
        };
        base + Duration::from_millis(jitter)
    }
}

/// Strips a trailing `/p2p/<id>` and returns the address and the id it named, if any.
pub fn split_peer_id(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut addr = addr.clone();
    match addr.pop() {
        Some(Protocol::P2p(peer)) => (addr, Some(peer)),
        Some(other) => {
            addr.push(other);
            (addr, None)
        }
        None => (addr, None),
    }
}

/// The IP address an address starts with, if it starts with one; IPv4-mapped IPv6 addresses
/// come back as IPv4 so that IPv4 lists and limits apply to them.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)),
        _ => None,
    }
}

/// Whether an address is worth sharing and dialling on the public internet: not loopback,
/// private, link-local, unspecified or otherwise special.
pub fn is_global(addr: &Multiaddr) -> bool {
    // DNS names and other addresses: leave the decision to the dialer.
    ip_of(addr).is_none_or(is_global_ip)
}

/// Whether an IP address is routable on the public internet: not loopback, private,
/// link-local, unspecified or otherwise special.
pub fn is_global_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64))
        }
        IpAddr::V6(ip) => {
            let seg0 = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || (seg0 & 0xfe00) == 0xfc00
                || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}

/// The address book (see the module documentation).
#[derive(Debug, Default)]
pub struct AddressBook {
    records: HashMap<PeerId, PeerRecord>,
}

#[derive(Serialize, Deserialize)]
struct StoredAddr {
    addr: Vec<u8>,
    failures: u32,
    source: AddrSource,
    verified: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    peer: Vec<u8>,
    addrs: Vec<StoredAddr>,
    source: AddrSource,
    last_seen: Option<u64>,
    failures: u32,
    anchor: bool,
    capabilities: u8,
}

/// An address as format version 1 stored it.
#[derive(Serialize, Deserialize)]
struct StoredAddrV1 {
    addr: Vec<u8>,
    failures: u32,
}

/// A record as format version 1 stored it.
#[derive(Serialize, Deserialize)]
struct StoredRecordV1 {
    peer: Vec<u8>,
    addrs: Vec<StoredAddrV1>,
    source: AddrSource,
    last_seen: Option<u64>,
    failures: u32,
    anchor: bool,
}

impl From<StoredRecordV1> for StoredRecord {
    fn from(r: StoredRecordV1) -> Self {
        let source = r.source;
        Self {
            peer: r.peer,
            addrs: r
                .addrs
                .into_iter()
                .map(|a| StoredAddr {
                    addr: a.addr,
                    failures: a.failures,
                    source,
                    verified: false,
                })
                .collect(),
            source,
            last_seen: r.last_seen,
            failures: r.failures,
            anchor: r.anchor,
            capabilities: 0,
        }
    }
}

impl AddressBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of peers in the book.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record of a peer.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.records.get(peer)
    }

    /// All records, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.records.values()
    }

    /// Adds addresses of a peer learned from `source`. Addresses carrying a `/p2p/` id are
    /// stored without it; addresses naming another peer are ignored. When the book is full the
    /// worst record that is not an anchor nor from the operator makes room: one without a
    /// verified address first, then the most failures, then the least recently seen.
    pub fn add(
        &mut self,
        peer: PeerId,
        addrs: impl IntoIterator<Item = Multiaddr>,
        source: AddrSource,
    ) {
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter_map(|a| match split_peer_id(&a) {
                (a, None) => Some(a),
                (a, Some(id)) if id == peer => Some(a),
                _ => None,
            })
            .collect();
        if addrs.is_empty() {
            return;
        }
        if !self.records.contains_key(&peer) && self.records.len() >= MAX_ADDRESS_BOOK_ENTRIES {
            let worst = self
                .records
                .values()
                .filter(|r| !r.anchor && !r.source.is_trusted())
                .max_by_key(|r| {
                    (
                        r.verified_addrs().next().is_none(),
                        r.failures,
                        std::cmp::Reverse(r.last_seen),
                        r.peer,
                    )
                })
                .map(|r| r.peer);
            match worst {
                Some(worst) => {
                    self.records.remove(&worst);
                }
                None => return,
            }
        }
        let record = self.records.entry(peer).or_insert_with(|| PeerRecord {
            peer,
            addrs: Vec::new(),
            source,
            last_seen: None,
            failures: FailureCount::default(),
            anchor: false,
            capabilities: Capabilities::NONE,
        });
        if source.is_trusted() && !record.source.is_trusted() {
            record.source = source;
        }
        for addr in addrs {
            if let Some(entry) = record.addrs.iter_mut().find(|e| e.addr == addr) {
                if source.is_trusted() && !entry.source.is_trusted() {
                    entry.source = source;
                }
                continue;
            }
            if record.addrs.len() >= MAX_ADDRS_PER_PEER {
                // Forget the address that failed most (the oldest on ties).
                if let Some(pos) = record
                    .addrs
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, e)| (e.failures, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
                {
                    record.addrs.remove(pos);
                }
            }
            record.addrs.push(AddrEntry {
                addr,
                source,
                verified: false,
                failures: FailureCount::default(),
                retry_at: None,
            });
        }
    }

    /// Records what `peer` offers, if the book knows it (capabilities are a hint for choosing
    /// peers, never a reason to add one).
    pub fn set_capabilities(&mut self, peer: &PeerId, capabilities: Capabilities) {
        if let Some(record) = self.records.get_mut(peer) {
            record.capabilities = capabilities;
        }
    }

    /// An address stopped being announced (an mDNS record expired). It is forgotten only if it
    /// is also failing and was never verified: an announcement can lapse because one multicast
    /// packet was lost, so expiry alone proves nothing. A record left with no address and no
    /// operator source goes too. Returns whether the address was removed.
    pub fn expire_addr(&mut self, peer: &PeerId, addr: &Multiaddr) -> bool {
        let (addr, _) = split_peer_id(addr);
        let Some(record) = self.records.get_mut(peer) else {
            return false;
        };
        let before = record.addrs.len();
        record
            .addrs
            .retain(|e| e.addr != addr || e.verified || e.failures.0 == 0);
        let removed = record.addrs.len() < before;
        if record.addrs.is_empty() && !record.source.is_trusted() {
            self.records.remove(peer);
        }
        removed
    }

    /// Forgets a peer.
    pub fn remove(&mut self, peer: &PeerId) -> Option<PeerRecord> {
        self.records.remove(peer)
    }

    /// Addresses of `peer` whose backoff has expired at `now`.
    pub fn dialable(&self, peer: &PeerId, now: Instant) -> Vec<Multiaddr> {
        self.records.get(peer).map_or_else(Vec::new, |r| {
            r.addrs
                .iter()
                .filter(|e| e.retry_at.is_none_or(|t| t <= now))
                .map(|e| e.addr.clone())
                .collect()
        })
    }

    /// Records a connection to `peer` (through `addr` for an outbound one): it was seen now, and
    /// the address works (it becomes verified). The peer's failure count is only cleared by
    /// [`AddressBook::record_healthy`], once the connection has lasted: a peer that accepts and
    /// drops us at once must keep backing off.
    pub fn record_connected(&mut self, peer: &PeerId, addr: Option<&Multiaddr>, now: UnixTime) {
        if let Some(record) = self.records.get_mut(peer) {
            record.last_seen = Some(now);
            if let Some(addr) = addr {
                let (addr, _) = split_peer_id(addr);
                if let Some(entry) = record.addrs.iter_mut().find(|e| e.addr == addr) {
                    entry.failures = FailureCount::default();
                    entry.retry_at = None;
                    entry.verified = true;
                }
            }
        }
    }

    /// Clears the failure count of a peer whose connection proved stable.
    pub fn record_healthy(&mut self, peer: &PeerId) {
        if let Some(record) = self.records.get_mut(peer) {
            record.failures = FailureCount::default();
        }
    }

    /// Records that dialling `addr` of `peer` failed and sets its backoff.
    pub fn record_addr_failure(
        &mut self,
        peer: &PeerId,
        addr: &Multiaddr,
        now: Instant,
        backoff: &BackoffConfig,
        rng: &mut StdRng,
    ) {
        let (addr, _) = split_peer_id(addr);
        if let Some(entry) = self
            .records
            .get_mut(peer)
            .and_then(|r| r.addrs.iter_mut().find(|e| e.addr == addr))
        {
            entry.failures.0 = entry.failures.0.saturating_add(1);
            entry.retry_at = Some(now + backoff.delay(entry.failures, rng));
        }
    }

    /// Records a dial attempt in which every address of `peer` failed; addresses not yet backed
    /// off (a dial that failed as a whole) get the peer's backoff.
    pub fn record_peer_failure(
        &mut self,
        peer: &PeerId,
        now: Instant,
        backoff: &BackoffConfig,
        rng: &mut StdRng,
    ) {
        if let Some(record) = self.records.get_mut(peer) {
            record.failures.0 = record.failures.0.saturating_add(1);
            let delay = backoff.delay(record.failures, rng);
            for entry in &mut record.addrs {
                if entry.retry_at.is_none_or(|t| t <= now) {
                    entry.retry_at = Some(now + delay);
                }
            }
        }
    }

    /// Marks exactly the given peers (at most [`MAX_ANCHORS`]) as anchors.
    pub fn set_anchors(&mut self, anchors: &[PeerId]) {
        for record in self.records.values_mut() {
            record.anchor = false;
        }
        for peer in anchors.iter().take(MAX_ANCHORS) {
            if let Some(record) = self.records.get_mut(peer) {
                record.anchor = true;
            }
        }
    }

    /// Encodes the book for the store (postcard, prefixed with a format version byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut records: Vec<StoredRecord> = self
            .records
            .values()
            .map(|r| StoredRecord {
                peer: r.peer.to_bytes(),
                addrs: r
                    .addrs
                    .iter()
                    .map(|e| StoredAddr {
                        addr: e.addr.to_vec(),
                        failures: e.failures.0,
                        source: e.source,
                        verified: e.verified,
                    })
                    .collect(),
                source: r.source,
                last_seen: r.last_seen.map(|t| t.0),
                failures: r.failures.0,
                anchor: r.anchor,
                capabilities: r.capabilities.bits(),
            })
            .collect();
        // A stable order makes the saved blob deterministic.
        records.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut out = vec![FORMAT_VERSION];
        // Serializing plain owned data into a Vec cannot fail; fall back to an empty book if a
        // future postcard version ever disagrees.
        out.extend(postcard::to_stdvec(&records).unwrap_or_default());
        out
    }

    /// Decodes a blob written by [`AddressBook::encode`]. Invalid entries are skipped; a blob
    /// of another format version or that is not postcard at all is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, AddrBookError> {
        if bytes.len() > MAX_ENCODED_BOOK_BYTES {
            return Err(AddrBookError::Corrupt(format!(
                "{} bytes is over the limit",
                bytes.len()
            )));
        }
        let (version, body) = bytes
            .split_first()
            .ok_or_else(|| AddrBookError::Corrupt("empty blob".into()))?;
        let corrupt = |e: postcard::Error| AddrBookError::Corrupt(e.to_string());
        let stored: Vec<StoredRecord> = match *version {
            FORMAT_VERSION => postcard::from_bytes(body).map_err(corrupt)?,
            FORMAT_VERSION_1 => postcard::from_bytes::<Vec<StoredRecordV1>>(body)
                .map_err(corrupt)?
                .into_iter()
                .map(StoredRecord::from)
                .collect(),
            other => {
                return Err(AddrBookError::Corrupt(format!(
                    "unknown format version {other}"
                )));
            }
        };
        let mut book = Self::new();
        for r in stored.into_iter().take(MAX_ADDRESS_BOOK_ENTRIES) {
            let Ok(peer) = PeerId::from_bytes(&r.peer) else {
                continue;
            };
            let addrs: Vec<AddrEntry> = r
                .addrs
                .into_iter()
                .take(MAX_ADDRS_PER_PEER)
                .filter_map(|a| {
                    Multiaddr::try_from(a.addr).ok().map(|addr| AddrEntry {
                        addr,
                        source: a.source,
                        verified: a.verified,
                        failures: FailureCount(a.failures),
                        retry_at: None,
                    })
                })
                .collect();
            if addrs.is_empty() {
                continue;
            }
            book.records.insert(
                peer,
                PeerRecord {
                    peer,
                    addrs,
                    source: r.source,
                    last_seen: r.last_seen.map(UnixTime),
                    failures: FailureCount(r.failures),
                    anchor: r.anchor,
                    capabilities: Capabilities::from_bits(r.capabilities),
                },
            );
        }
        Ok(book)
    }

    /// Loads the book from a store; an empty store gives an empty book.
    pub fn load(store: &dyn AddressBookStore) -> Result<Self, AddrBookError> {
        match store.load()? {
            Some(bytes) => Self::decode(&bytes),
            None => Ok(Self::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    proptest! {
        /// A corrupted store blob is an error or a valid book, never a panic.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(book) = AddressBook::decode(&bytes) {
                prop_assert!(book.len() <= MAX_ADDRESS_BOOK_ENTRIES);
            }
        }
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("valid multiaddr")
    }

    #[test]
    fn encode_decode_round_trip_keeps_records() {
        let mut book = AddressBook::new();
        let a = PeerId::random();
        let b = PeerId::random();
        book.add(
            a,
            [
                addr("/ip4/10.0.0.1/tcp/1"),
                addr("/ip4/10.0.0.1/udp/1/quic-v1"),
            ],
            AddrSource::Bootstrap,
        );
        book.add(
            b,
            [addr(&format!("/ip4/10.0.0.2/tcp/2/p2p/{b}"))],
            AddrSource::Identify,
        );
        book.record_connected(&a, None, UnixTime(77));
        book.set_anchors(&[a]);
        let mut rng = StdRng::seed_from_u64(1);
        book.record_addr_failure(
            &b,
            &addr("/ip4/10.0.0.2/tcp/2"),
            Instant::now(),
            &BackoffConfig::default(),
            &mut rng,
        );

        let decoded = AddressBook::decode(&book.encode()).expect("decodes");
        let ra = decoded.get(&a).expect("a kept");
        assert!(ra.anchor);
        assert_eq!(ra.last_seen, Some(UnixTime(77)));
        assert_eq!(ra.source, AddrSource::Bootstrap);
        assert_eq!(ra.addrs.len(), 2);
        let rb = decoded.get(&b).expect("b kept");
        assert_eq!(rb.addrs[0].addr, addr("/ip4/10.0.0.2/tcp/2"));
        assert_eq!(rb.addrs[0].failures, FailureCount(1));
        assert!(!rb.anchor);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(AddressBook::decode(&[]).is_err());
        assert!(AddressBook::decode(&[9, 1, 2]).is_err());
        assert!(AddressBook::decode(&[FORMAT_VERSION, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn addresses_naming_another_peer_are_ignored_and_capped() {
        let mut book = AddressBook::new();
        let a = PeerId::random();
        let other = PeerId::random();
        book.add(
            a,
            [addr(&format!("/ip4/10.0.0.1/tcp/1/p2p/{other}"))],
            AddrSource::Identify,
        );
        assert!(book.get(&a).is_none());
        book.add(
            a,
            (0..20).map(|p| addr(&format!("/ip4/10.0.0.1/tcp/{p}"))),
            AddrSource::Identify,
        );
        assert_eq!(book.get(&a).expect("added").addrs.len(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            jitter_percent: 0,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<u64> = (1..=6)
            .map(|n| cfg.delay(FailureCount(n), &mut rng).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        let jittered = BackoffConfig {
            jitter_percent: 50,
            ..cfg
        };
        for n in 1..=6 {
            let d = jittered.delay(FailureCount(n), &mut rng);
            let base = cfg.delay(FailureCount(n), &mut rng);
            assert!(d >= base && d <= base + base / 2, "{d:?} vs {base:?}");
        }
    }

    #[test]
    fn failed_address_waits_for_its_backoff() {
        let mut book = AddressBook::new();
        let a = PeerId::random();
        let tcp = addr("/ip4/10.0.0.1/tcp/1");
        let quic = addr("/ip4/10.0.0.1/udp/1/quic-v1");
        book.add(a, [tcp.clone(), quic.clone()], AddrSource::Manual);
        let now = Instant::now();
        let cfg = BackoffConfig {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            jitter_percent: 0,
        };
        let mut rng = StdRng::seed_from_u64(3);
        book.record_addr_failure(&a, &tcp, now, &cfg, &mut rng);
        assert_eq!(book.dialable(&a, now), vec![quic.clone()]);
        assert_eq!(
            book.dialable(&a, now + Duration::from_secs(2)),
            vec![tcp, quic]
        );
    }

    #[test]
    fn full_book_evicts_worst_untrusted_record() {
        let mut book = AddressBook::new();
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        let cfg = BackoffConfig::default();
        let mut first = None;
        for i in 0..MAX_ADDRESS_BOOK_ENTRIES {
            let p = PeerId::random();
            book.add(
                p,
                [addr(&format!("/ip4/10.1.{}.{}/tcp/1", i / 256, i % 256))],
                AddrSource::PeerExchange,
            );
            if i == 0 {
                first = Some(p);
                book.record_peer_failure(&p, now, &cfg, &mut rng);
            }
        }
        let newcomer = PeerId::random();
        book.add(
            newcomer,
            [addr("/ip4/10.2.0.1/tcp/1")],
            AddrSource::PeerExchange,
        );
        assert_eq!(book.len(), MAX_ADDRESS_BOOK_ENTRIES);
        assert!(book.get(&newcomer).is_some());
        assert!(
            book.get(&first.expect("set")).is_none(),
            "the failing record made room"
        );
    }

    #[test]
    fn addresses_are_verified_only_by_a_successful_dial() {
        let mut book = AddressBook::new();
        let p = PeerId::random();
        let a = addr("/ip4/10.0.0.1/udp/1/quic-v1");
        book.add(p, [a.clone()], AddrSource::PeerExchange);
        let record = book.get(&p).expect("added");
        assert_eq!(record.addrs[0].source, AddrSource::PeerExchange);
        assert_eq!(record.verified_addrs().count(), 0, "a claim is not a fact");
        // An inbound connection proves nothing about the listen address.
        book.record_connected(&p, None, UnixTime(5));
        assert_eq!(book.get(&p).expect("kept").verified_addrs().count(), 0);
        book.record_connected(&p, Some(&a), UnixTime(6));
        let decoded = AddressBook::decode(&book.encode()).expect("decodes");
        assert_eq!(
            decoded
                .get(&p)
                .expect("kept")
                .verified_addrs()
                .collect::<Vec<_>>(),
            vec![&a]
        );
    }

    #[test]
    fn version_1_books_still_load() {
        let p = PeerId::random();
        let v1 = vec![StoredRecordV1 {
            peer: p.to_bytes(),
            addrs: vec![StoredAddrV1 {
                addr: addr("/ip4/10.0.0.1/tcp/1").to_vec(),
                failures: 2,
            }],
            source: AddrSource::Bootstrap,
            last_seen: Some(9),
            failures: 1,
            anchor: true,
        }];
        let mut bytes = vec![FORMAT_VERSION_1];
        bytes.extend(postcard::to_stdvec(&v1).expect("encodes"));
        let book = AddressBook::decode(&bytes).expect("v1 decodes");
        let r = book.get(&p).expect("kept");
        assert!(r.anchor);
        assert_eq!(r.addrs[0].failures, FailureCount(2));
        assert_eq!(r.addrs[0].source, AddrSource::Bootstrap);
        assert!(!r.addrs[0].verified);
    }

    #[test]
    fn expired_announcement_removes_only_failing_unverified_addresses() {
        let mut book = AddressBook::new();
        let mut rng = StdRng::seed_from_u64(3);
        let p = PeerId::random();
        let (a, b) = (
            addr("/ip4/10.0.0.1/udp/1/quic-v1"),
            addr("/ip4/10.0.0.2/udp/1/quic-v1"),
        );
        book.add(p, [a.clone(), b.clone()], AddrSource::Mdns);
        assert!(!book.expire_addr(&p, &a), "never failed: kept");
        book.record_addr_failure(&p, &a, Instant::now(), &BackoffConfig::default(), &mut rng);
        assert!(book.expire_addr(&p, &a), "failing and expired: removed");
        book.record_connected(&p, Some(&b), UnixTime(1));
        book.record_addr_failure(&p, &b, Instant::now(), &BackoffConfig::default(), &mut rng);
        assert!(!book.expire_addr(&p, &b), "verified: kept");
        assert_eq!(book.get(&p).expect("kept").addrs.len(), 1);
    }

    #[test]
    fn is_global_filters_local_addresses() {
        assert!(!is_global(&addr("/ip4/127.0.0.1/tcp/1")));
        assert!(!is_global(&addr("/ip4/192.168.1.1/tcp/1")));
        assert!(!is_global(&addr("/ip6/fe80::1/tcp/1")));
        assert!(is_global(&addr("/ip4/8.8.8.8/tcp/1")));
        assert!(is_global(&addr("/ip6/2001:4860::1/tcp/1")));
    }

    #[test]
    fn fn_store_adapts_closures() {
        let mem = MemoryStore::new();
        let (l, s) = (mem.clone(), mem.clone());
        let store = FnStore::new(
            move || -> Result<_, std::io::Error> { Ok(l.bytes()) },
            move |b: &[u8]| -> Result<(), std::io::Error> {
                s.save(b).map_err(std::io::Error::other)
            },
        );
        assert!(AddressBookStore::load(&store).expect("load").is_none());
        store.save(b"x").expect("save");
        assert_eq!(mem.bytes().as_deref(), Some(&b"x"[..]));
    }
}
