//! [`NetworkConfig`]: everything the network needs to know from the operator.

use std::time::Duration;

use ipnet::IpNet;
use libp2p::{Multiaddr, PeerId};
use playergold_protocol::Capabilities;

use crate::addrbook::{BackoffConfig, split_peer_id};
use crate::latency::LinkDelay;
use crate::protocol::{NetworkName, ProtocolError};

/// Default TCP and UDP (QUIC) port.
pub const DEFAULT_PORT: u16 = 30777;

/// Default outbound target: Bitcoin Core keeps 8 full-relay outbound peers, enough that an
/// attacker must control many addresses to eclipse a node.
pub const DEFAULT_MIN_PEERS: usize = 8;

/// Default total peer cap: 50 connections keep per-node bandwidth and memory modest while giving
/// plenty of inbound slots for new nodes.
pub const DEFAULT_MAX_PEERS: usize = 50;

/// Default slots kept free for our own outbound dials: the outbound target plus two for manual
/// and persistent peers, so inbound peers can never crowd out our own choices.
pub const DEFAULT_OUTBOUND_RESERVE: usize = DEFAULT_MIN_PEERS + 2;

/// Default inbound connections from one IP address: a few nodes behind one NAT are normal, a
/// dozen is a single host trying to take many slots.
pub const DEFAULT_MAX_INBOUND_PER_IP: usize = 4;

/// Default handshakes in flight from remote dialers: a TLS handshake costs CPU, so 32 bounds the
/// work an unauthenticated flood can make us do at once.
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 32;

/// Default dials in flight: our own dialling never needs more than the outbound target at once.
pub const DEFAULT_MAX_PENDING_OUTGOING: u32 = 16;

/// Default fraction of the system memory the process may use before new connections are
/// refused (libp2p memory-connection-limits).
pub const DEFAULT_MAX_MEMORY_PERCENT: u8 = 90;

/// Default ping interval: 15 s notices a dead peer within half a minute at negligible cost.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

/// Default ping timeout: 20 s tolerates a congested link without keeping dead peers for long.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

/// Default pause between two address requests to the same peer while we lack candidates: a
/// minute keeps peer exchange traffic negligible.
pub const DEFAULT_ADDR_REQUEST_INTERVAL: Duration = Duration::from_secs(60);

/// Default outbound slots kept for AI-capable peers: two, so that AI challenges and solutions
/// have two independent paths into the AI subnetwork from every node (like Lighthouse's
/// subnet peers), while six of the eight outbound slots stay free for everyone else.
pub const DEFAULT_AI_PEER_SLOTS: usize = 2;

/// Default refill interval of the per-peer peer-exchange token bucket: one answer per 500 ms.
/// Honest peers ask at most once per `addr_request_interval` (a minute by default; a second on
/// test networks), so only a peer that spams requests to make us work ever runs dry.
pub const DEFAULT_ADDR_RESPONSE_INTERVAL: Duration = Duration::from_millis(500);

/// Default burst of the per-peer peer-exchange token bucket: a reconnecting peer may ask a few
/// times in a row without waiting.
pub const DEFAULT_ADDR_RESPONSE_BURST: u32 = 3;

/// Whether this node serves the Kademlia DHT to others (answers lookups, stores provider
/// records) or only uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DhtMode {
    /// Server once the node knows it is reachable (an external address is confirmed: declared
    /// in `external_addrs`), client until then. An unreachable server would only make lookups of
    /// other nodes time out.
    #[default]
    Auto,
    /// Always a server (test networks and devnets, where every node is reachable).
    Server,
    /// Never a server.
    Client,
}

/// Errors in a [`NetworkConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The network name is invalid.
    #[error(transparent)]
    Network(#[from] ProtocolError),
    /// `min_peers` exceeds the outbound reserve, so the target could never be met.
    #[error(
        "min_peers ({min_peers}) exceeds outbound_reserve ({reserve}): raise outbound_reserve or lower min_peers"
    )]
    TargetAboveReserve {
        /// Configured `min_peers`.
        min_peers: usize,
        /// Configured `outbound_reserve`.
        reserve: usize,
    },
    /// The outbound reserve exceeds `max_peers`.
    #[error("outbound_reserve ({reserve}) exceeds max_peers ({max_peers}): raise max_peers")]
    ReserveAboveMax {
        /// Configured `outbound_reserve`.
        reserve: usize,
        /// Configured `max_peers`.
        max_peers: usize,
    },
    /// A bootstrap or persistent peer address lacks `/p2p/<peer-id>`.
    #[error(
        "peer address {0} has no /p2p/<peer-id> suffix: append the peer id so its TLS identity can be checked"
    )]
    MissingPeerId(Multiaddr),
    /// No listen address is configured.
    #[error("no listen address configured: add at least one TCP or QUIC address")]
    NoListenAddr,
    /// The heartbeat interval or timeout is zero.
    #[error("heartbeat interval and timeout must be non-zero")]
    ZeroHeartbeat,
    /// The memory limit is not a percentage in 1..=100.
    #[error("max_memory_percent ({0}) must be between 1 and 100")]
    BadMemoryPercent(u8),
    /// The peer-exchange rate limit would never refill or never allow an answer.
    #[error(
        "addr_response_interval must be non-zero and addr_response_burst at least 1 (got {interval:?}, {burst})"
    )]
    BadAddrRateLimit {
        /// Configured `addr_response_interval`.
        interval: Duration,
        /// Configured `addr_response_burst`.
        burst: u32,
    },
}

/// Configuration of the network service.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Network name; part of every protocol id.
    pub network: NetworkName,
    /// Addresses to listen on. The default listens on TCP and QUIC on all interfaces.
    pub listen_addrs: Vec<Multiaddr>,
    /// Bootstrap peers (`.../p2p/<id>`), dialled when the address book has nothing better.
    pub bootstrap: Vec<Multiaddr>,
    /// Peers (`.../p2p/<id>`) that are always redialled and never evicted.
    pub persistent_peers: Vec<Multiaddr>,
    /// Outbound target: below it, the node dials from its address book.
    pub min_peers: usize,
    /// Most peers in total. DHT lookups briefly add connections on top: the inbound ones on
    /// probation (`policy::PROBATION_SLOTS`), the outbound ones until idle
    /// (`policy::DISCOVERY_CONNECTION_GRACE`).
    pub max_peers: usize,
    /// Slots kept for outbound peers; inbound slots are `max_peers - outbound_reserve`.
    pub outbound_reserve: usize,
    /// Most inbound peers from one IP address.
    pub max_inbound_per_ip: usize,
    /// Most inbound connections in their handshake at once.
    pub max_pending_incoming: u32,
    /// Most outbound dials in flight at once.
    pub max_pending_outgoing: u32,
    /// Refuse new connections once the process uses this percentage of system memory.
    pub max_memory_percent: u8,
    /// If non-empty, only these peers (or peers from `allow_cidrs`) may connect.
    pub allow_peers: Vec<PeerId>,
    /// If non-empty, only these networks (or peers from `allow_peers`) may connect.
    pub allow_cidrs: Vec<IpNet>,
    /// Peers that are never accepted nor dialled.
    pub deny_peers: Vec<PeerId>,
    /// Networks that are never accepted nor dialled.
    pub deny_cidrs: Vec<IpNet>,
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// A ping not answered within this time disconnects the peer.
    pub heartbeat_timeout: Duration,
    /// Dial retry backoff.
    pub backoff: BackoffConfig,
    /// Least time between two address requests to one peer while below the outbound target.
    pub addr_request_interval: Duration,
    /// Accept loopback and private addresses learned from peers (tests, private networks).
    pub allow_local_addresses: bool,
    /// Seed for the backoff jitter; `None` draws one from the OS (tests fix it).
    pub rng_seed: Option<u64>,
    /// Emulated one-way delay of each TCP link this node dials (benchmarks and tests only;
    /// `None` in production). See [`crate::latency`].
    pub link_delay: Option<LinkDelay>,
    /// Discover peers on the local network with mDNS (multicast on every interface).
    pub mdns: bool,
    /// Run the Kademlia DHT (`/playergold/<network>/kad/1.0.0`): find peers beyond the
    /// bootstrap nodes and peers with a capability.
    pub dht: bool,
    /// Whether the DHT serves others; see [`DhtMode`].
    pub dht_mode: DhtMode,
    /// Addresses at which the operator knows this node is reachable from other nodes (a public
    /// IP, a forwarded port). They are announced to peers and make [`DhtMode::Auto`] a server.
    pub external_addrs: Vec<Multiaddr>,
    /// What this node offers (ai-compute, validator, archive), announced to peers in identify
    /// and, for ai-compute and archive, as DHT provider records.
    pub capabilities: Capabilities,
    /// Outbound slots kept for AI-capable peers: below it the node looks them up in the DHT and
    /// dials them, and eviction protects that many AI-capable peers. Capped at
    /// `outbound_reserve`.
    pub ai_peer_slots: usize,
    /// Peer exchange rate limit: each peer's token bucket gains one answer per this interval.
    pub addr_response_interval: Duration,
    /// Peer exchange rate limit: answers a peer may save up.
    pub addr_response_burst: u32,
}

impl NetworkConfig {
    /// Defaults for the given network: TCP and QUIC on [`DEFAULT_PORT`] on all interfaces.
    pub fn new(network: NetworkName) -> Self {
        let tcp = format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}");
        let quic = format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1");
        Self {
            network,
            listen_addrs: [tcp, quic].iter().filter_map(|a| a.parse().ok()).collect(),
            bootstrap: Vec::new(),
            persistent_peers: Vec::new(),
            min_peers: DEFAULT_MIN_PEERS,
            max_peers: DEFAULT_MAX_PEERS,
            outbound_reserve: DEFAULT_OUTBOUND_RESERVE,
            max_inbound_per_ip: DEFAULT_MAX_INBOUND_PER_IP,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            max_pending_outgoing: DEFAULT_MAX_PENDING_OUTGOING,
            max_memory_percent: DEFAULT_MAX_MEMORY_PERCENT,
            allow_peers: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_peers: Vec::new(),
            deny_cidrs: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            backoff: BackoffConfig::default(),
            addr_request_interval: DEFAULT_ADDR_REQUEST_INTERVAL,
            allow_local_addresses: false,
            rng_seed: None,
            link_delay: None,
            mdns: true,
            dht: true,
            dht_mode: DhtMode::Auto,
            external_addrs: Vec::new(),
            capabilities: Capabilities::NONE,
            ai_peer_slots: DEFAULT_AI_PEER_SLOTS,
            addr_response_interval: DEFAULT_ADDR_RESPONSE_INTERVAL,
            addr_response_burst: DEFAULT_ADDR_RESPONSE_BURST,
        }
    }

    /// Outbound slots actually kept for AI-capable peers: `ai_peer_slots`, at most
    /// `outbound_reserve`.
    pub fn ai_quota(&self) -> usize {
        self.ai_peer_slots.min(self.outbound_reserve)
    }

    /// Inbound slots: `max_peers - outbound_reserve`.
    pub fn inbound_slots(&self) -> usize {
        self.max_peers.saturating_sub(self.outbound_reserve)
    }

    /// Checks the configuration for contradictions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.min_peers > self.outbound_reserve {
            return Err(ConfigError::TargetAboveReserve {
                min_peers: self.min_peers,
                reserve: self.outbound_reserve,
            });
        }
        if self.outbound_reserve > self.max_peers {
            return Err(ConfigError::ReserveAboveMax {
                reserve: self.outbound_reserve,
                max_peers: self.max_peers,
            });
        }
        if self.listen_addrs.is_empty() {
            return Err(ConfigError::NoListenAddr);
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if !(1..=100).contains(&self.max_memory_percent) {
            return Err(ConfigError::BadMemoryPercent(self.max_memory_percent));
        }
        if self.addr_response_interval.is_zero() || self.addr_response_burst == 0 {
            return Err(ConfigError::BadAddrRateLimit {
                interval: self.addr_response_interval,
                burst: self.addr_response_burst,
            });
        }
        for addr in self.bootstrap.iter().chain(&self.persistent_peers) {
            if split_peer_id(addr).1.is_none() {
                return Err(ConfigError::MissingPeerId(addr.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkName {
        NetworkName::new("testnet").expect("valid")
    }

    #[test]
    fn defaults_are_valid_and_listen_on_both_transports() {
        let cfg = NetworkConfig::new(net());
        cfg.validate().expect("valid defaults");
        assert_eq!(cfg.min_peers, 8);
        assert_eq!(cfg.max_peers, 50);
        assert_eq!(cfg.inbound_slots(), 40);
        assert!(cfg.mdns && cfg.dht);
        assert_eq!(cfg.dht_mode, DhtMode::Auto);
        assert_eq!(cfg.ai_quota(), DEFAULT_AI_PEER_SLOTS);
        let s: Vec<String> = cfg.listen_addrs.iter().map(ToString::to_string).collect();
        assert!(s.iter().any(|a| a.contains("/tcp/")));
        assert!(s.iter().any(|a| a.contains("/quic-v1")));
    }

    #[test]
    fn contradictions_are_reported() {
        let mut cfg = NetworkConfig::new(net());
        cfg.min_peers = 20;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::TargetAboveReserve { .. })
        ));
        let mut cfg = NetworkConfig::new(net());
        cfg.bootstrap
            .push("/ip4/1.2.3.4/tcp/1".parse().expect("addr"));
        let err = cfg.validate().expect_err("missing id");
        assert!(err.to_string().contains("/p2p/"));
    }
}
