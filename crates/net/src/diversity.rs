//! IP diversity of the Kademlia routing table: a sans-IO filter that decides every insertion.
//!
//! rust-libp2p's routing table accepts any peer, so one operator with a /24 of addresses could
//! fill a node's buckets with its own peer ids and eclipse it (every lookup would then go
//! through the attacker). geth and discv5 limit how many entries may share a subnet; so do we:
//! at most [`MAX_PER_SUBNET_PER_BUCKET`] entries of one subnet per bucket and
//! [`MAX_PER_SUBNET_PER_TABLE`] in the whole table, for public addresses. Loopback and private
//! addresses are exempt when the network allows local addresses (devnets, tests) and refused
//! otherwise; an address without an IP (a DNS name) cannot be grouped and is refused.
//!
//! The DHT runs with manual bucket inserts (`kad::BucketInserts::Manual`), so nothing enters the
//! table unless the adapter first asks [`DiversityFilter::check`] and then records the outcome
//! with [`DiversityFilter::insert`]. Kademlia can still drop entries by itself (a pending peer
//! replacing a dead one reports the `old_peer`); the adapter forwards those with
//! [`DiversityFilter::remove`], and [`DiversityFilter::resync`] rebuilds the view from the table
//! now and then, so a missed event can never leave the filter stricter or looser for long.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::KBucketKey;

use crate::addrbook::is_global_ip;

/// Entries of one subnet allowed in one bucket: geth's `bucketIPLimit`. Two leaves room for a
/// couple of honest nodes sharing a hosting provider's /24.
pub const MAX_PER_SUBNET_PER_BUCKET: usize = 2;

/// Entries of one subnet allowed in the whole table: geth's `tableIPLimit`. An attacker needs
/// addresses in many distinct /24s to take a meaningful share of a 20 x 256 table.
pub const MAX_PER_SUBNET_PER_TABLE: usize = 10;

/// Prefix length grouping IPv4 addresses: a /24 is the smallest block commonly routed and
/// rented, so one operator usually has one.
pub const IPV4_SUBNET_BITS: u8 = 24;

/// Prefix length grouping IPv6 addresses: a /48 is what one site is usually assigned, so a
/// single host can use a whole /64 (or more) and must not count as many.
pub const IPV6_SUBNET_BITS: u8 = 48;

/// How long an admitted entry that Kademlia holds as *pending* (its bucket was full) keeps
/// counting before [`DiversityFilter::resync`] drops it: Kademlia's own pending timeout (60 s)
/// plus slack. Counting pending entries errs on the strict side.
pub const PENDING_ENTRY_LIFETIME: Duration = Duration::from_secs(90);

/// The group an address belongs to for diversity: its /24 (IPv4) or /48 (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subnet {
    /// The first three octets of an IPv4 address.
    V4([u8; 3]),
    /// The first six octets of an IPv6 address.
    V6([u8; 6]),
}

impl Subnet {
    /// The subnet of `ip`; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
                }
            },
        }
    }
}

/// Why the filter refused a routing-table entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiversityRefusal {
    /// The bucket already holds the most entries allowed from this subnet.
    #[error("bucket {bucket} already holds {MAX_PER_SUBNET_PER_BUCKET} peers from {subnet:?}")]
    BucketFull {
        /// The bucket (log2 of the XOR distance).
        bucket: u32,
        /// The crowded subnet.
        subnet: Subnet,
    },
    /// The table already holds the most entries allowed from this subnet.
    #[error("the routing table already holds {MAX_PER_SUBNET_PER_TABLE} peers from {0:?}")]
    TableFull(Subnet),
    /// A loopback or private address while the network does not allow local addresses.
    #[error("local address {0} is not allowed on this network (allow_local_addresses is off)")]
    LocalAddress(IpAddr),
    /// The peer is the local node.
    #[error("the local node is not in its own routing table")]
    SelfEntry,
    /// The address has no IP (a DNS name), so it cannot be grouped.
    #[error("only IP addresses enter the routing table")]
    NotAnIpAddress,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    bucket: u32,
    /// `None` for an exempt (local) address.
    subnet: Option<Subnet>,
    /// When Kademlia queued it as pending; `None` once it is in the table.
    pending_since: Option<Instant>,
}

/// The routing-table diversity filter (see the module documentation).
#[derive(Debug)]
pub struct DiversityFilter {
    local: KBucketKey<PeerId>,
    allow_local: bool,
    entries: HashMap<PeerId, Entry>,
}

impl DiversityFilter {
    /// A filter for the routing table of `local`. `allow_local` exempts loopback and private
    /// addresses (otherwise they are refused).
    pub fn new(local: PeerId, allow_local: bool) -> Self {
        Self {
            local: KBucketKey::from(local),
            allow_local,
            entries: HashMap::new(),
        }
    }

    /// The bucket `peer` falls in: log2 of its XOR distance to us, `None` for ourselves.
    pub fn bucket_of(&self, peer: PeerId) -> Option<u32> {
        self.local.distance(&KBucketKey::from(peer)).ilog2()
    }

    /// The subnet an entry at `ip` counts against, `None` when exempt.
    fn subnet_for(&self, ip: IpAddr) -> Result<Option<Subnet>, DiversityRefusal> {
        if is_global_ip(ip) {
            Ok(Some(Subnet::of(ip)))
        } else if self.allow_local {
            Ok(None)
        } else {
            Err(DiversityRefusal::LocalAddress(ip))
        }
    }

    /// Entries of `subnet` in `bucket` (or in the whole table when `bucket` is `None`).
    fn count(&self, subnet: Subnet, bucket: Option<u32>) -> usize {
        self.entries
            .values()
            .filter(|e| e.subnet == Some(subnet) && bucket.is_none_or(|b| e.bucket == b))
            .count()
    }

    /// Whether `peer`, reachable at `ip`, may enter the table. A peer already in it may always
    /// add addresses (it occupies one entry however many it has).
    pub fn check(&self, peer: PeerId, ip: IpAddr) -> Result<(), DiversityRefusal> {
        let bucket = self.bucket_of(peer).ok_or(DiversityRefusal::SelfEntry)?;
        if self.entries.contains_key(&peer) {
            return Ok(());
        }
        let Some(subnet) = self.subnet_for(ip)? else {
            return Ok(());
        };
        if self.count(subnet, Some(bucket)) >= MAX_PER_SUBNET_PER_BUCKET {
            return Err(DiversityRefusal::BucketFull { bucket, subnet });
        }
        if self.count(subnet, None) >= MAX_PER_SUBNET_PER_TABLE {
            return Err(DiversityRefusal::TableFull(subnet));
        }
        Ok(())
    }

    /// Records that Kademlia took `peer` at `ip`: in the table (`pending_since: None`) or queued
    /// as pending since the given instant. Call only after [`DiversityFilter::check`] passed.
    pub fn insert(&mut self, peer: PeerId, ip: IpAddr, pending_since: Option<Instant>) {
        let (Some(bucket), Ok(subnet)) = (self.bucket_of(peer), self.subnet_for(ip)) else {
            return;
        };
        let entry = self.entries.entry(peer).or_insert(Entry {
            bucket,
            subnet,
            pending_since,
        });
        if pending_since.is_none() {
            entry.pending_since = None;
        }
    }

    /// Kademlia reports `peer` in the table (a pending entry was applied). Unknown peers are
    /// left to the next [`DiversityFilter::resync`].
    pub fn confirm(&mut self, peer: &PeerId) {
        if let Some(entry) = self.entries.get_mut(peer) {
            entry.pending_since = None;
        }
    }

    /// `peer` left the table (removed by us, or replaced by Kademlia).
    pub fn remove(&mut self, peer: &PeerId) {
        self.entries.remove(peer);
    }

    /// Rebuilds the view from the table's current entries (`(peer, ip of its first address)`):
    /// entries no longer in the table are dropped unless they are pending and younger than
    /// [`PENDING_ENTRY_LIFETIME`]; entries we did not know are counted as they are.
    pub fn resync(
        &mut self,
        table: impl IntoIterator<Item = (PeerId, Option<IpAddr>)>,
        now: Instant,
    ) {
        let mut fresh: HashMap<PeerId, Entry> = HashMap::new();
        for (peer, ip) in table {
            let Some(bucket) = self.bucket_of(peer) else {
                continue;
            };
            let subnet = match (self.entries.get(&peer), ip) {
                (Some(known), _) => known.subnet,
                (None, Some(ip)) => self.subnet_for(ip).ok().flatten(),
                (None, None) => None,
            };
            fresh.insert(
                peer,
                Entry {
                    bucket,
                    subnet,
                    pending_since: None,
                },
            );
        }
        for (peer, entry) in &self.entries {
            if let Some(since) = entry.pending_since
                && !fresh.contains_key(peer)
                && now.saturating_duration_since(since) < PENDING_ENTRY_LIFETIME
            {
                fresh.insert(*peer, *entry);
            }
        }
        self.entries = fresh;
    }

    /// Whether the filter counts `peer` (in the table or pending).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    /// Entries the filter counts (in the table or pending).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the filter counts no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Offers `peers` at `ips` and returns the admitted ones.
    fn offer(f: &mut DiversityFilter, peers: &[(PeerId, IpAddr)]) -> Vec<PeerId> {
        let mut admitted = Vec::new();
        for (peer, ip) in peers {
            if f.check(*peer, *ip).is_ok() {
                f.insert(*peer, *ip, None);
                admitted.push(*peer);
            }
        }
        admitted
    }

    #[test]
    fn one_slash24_gets_two_per_bucket_and_ten_per_table() {
        let mut f = DiversityFilter::new(PeerId::random(), false);
        let peers: Vec<(PeerId, IpAddr)> = (0..100)
            .map(|i| (PeerId::random(), ip(45, 67, 89, i)))
            .collect();
        let admitted = offer(&mut f, &peers);
        let mut per_bucket: HashMap<u32, usize> = HashMap::new();
        for p in &admitted {
            *per_bucket
                .entry(f.bucket_of(*p).expect("not self"))
                .or_default() += 1;
        }
        assert!(
            admitted.len() <= MAX_PER_SUBNET_PER_TABLE,
            "{}",
            admitted.len()
        );
        assert!(per_bucket.values().all(|n| *n <= MAX_PER_SUBNET_PER_BUCKET));
        assert!(!admitted.is_empty());
        // Peers from other subnets are unaffected.
        let other: Vec<(PeerId, IpAddr)> = (0..20)
            .map(|i| (PeerId::random(), ip(45, 67, i, 1)))
            .collect();
        let admitted_other = offer(&mut f, &other);
        assert!(admitted_other.len() >= 19, "{}", admitted_other.len());
    }

    #[test]
    fn local_addresses_are_exempt_only_when_allowed() {
        let loopback = ip(127, 0, 0, 1);
        let strict = DiversityFilter::new(PeerId::random(), false);
        assert!(matches!(
            strict.check(PeerId::random(), loopback),
            Err(DiversityRefusal::LocalAddress(_))
        ));
        let mut devnet = DiversityFilter::new(PeerId::random(), true);
        let peers: Vec<(PeerId, IpAddr)> = (0..100)
            .map(|i| (PeerId::random(), ip(10, 0, 0, i)))
            .collect();
        assert_eq!(offer(&mut devnet, &peers).len(), 100);
    }

    #[test]
    fn removal_and_resync_free_the_slots() {
        let mut f = DiversityFilter::new(PeerId::random(), false);
        let peers: Vec<(PeerId, IpAddr)> = (0..100)
            .map(|i| (PeerId::random(), ip(45, 67, 89, i)))
            .collect();
        let admitted = offer(&mut f, &peers);
        assert_eq!(f.len(), admitted.len());
        f.remove(&admitted[0]);
        assert_eq!(f.len(), admitted.len() - 1);
        // The table lost all but one entry behind our back; a resync catches up.
        let now = Instant::now();
        f.resync([(admitted[1], Some(ip(45, 67, 89, 1)))], now);
        assert_eq!(f.len(), 1);
        // A pending entry counts until its lifetime ends.
        let pending = PeerId::random();
        f.insert(pending, ip(45, 67, 90, 1), Some(now));
        f.resync([(admitted[1], None)], now + PENDING_ENTRY_LIFETIME / 2);
        assert_eq!(f.len(), 2);
        f.resync([(admitted[1], None)], now + PENDING_ENTRY_LIFETIME);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn ipv6_groups_by_slash48() {
        let a: IpAddr = "2001:db8:1:1::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:ffff::1".parse().expect("ip");
        let c: IpAddr = "2001:db8:2::1".parse().expect("ip");
        assert_eq!(Subnet::of(a), Subnet::of(b));
        assert_ne!(Subnet::of(a), Subnet::of(c));
        let mapped: IpAddr = "::ffff:45.67.89.1".parse().expect("ip");
        assert_eq!(Subnet::of(mapped), Subnet::of(ip(45, 67, 89, 200)));
    }
}
