//! The network service: one task owns the swarm; everything else holds a [`NetworkHandle`].
//!
//! [`start`] builds the swarm (TCP + TLS 1.3 + yamux, and QUIC v1), starts listening, loads
//! the address book and spawns the task. Commands reach the task through a bounded channel
//! ([`COMMAND_CHANNEL_CAPACITY`]) with replies on oneshots; events fan out on a bounded
//! broadcast channel ([`EVENT_CHANNEL_CAPACITY`]) where a subscriber that falls behind loses the
//! oldest events (and learns how many) instead of making the task buffer without end.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::metrics::{Recorder, Registry};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, connection_limits, identify, mdns,
    memory_connection_limits, ping, request_response,
};
use playergold_protocol::Capabilities;
use playergold_protocol::rate::RateLimiter;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::addrbook::{
    AddrBookError, AddrSource, AddressBook, AddressBookStore, MAX_ADDRS_PER_PEER, ip_of,
    split_peer_id,
};
use crate::behaviour::{GateEvent, Gatekeeper, NodeBehaviour, NodeBehaviourEvent};
use crate::config::{ConfigError, DEFAULT_ADDR_RESPONSE_INTERVAL, NetworkConfig};
use crate::discovery::{
    ANNOUNCED_CAPABILITIES, CapablePeer, DHT_EVICT_AFTER_FAILURES, DhtStatus, DiscoveryAction,
    DiscoveryScheduler, FIND_PEERS_TIMEOUT, MAX_CAPABLE_PEERS, MAX_PENDING_LOOKUPS,
    MAX_PROVIDER_RESOLVES, MDNS_QUERY_INTERVAL, MDNS_TTL, ROUTING_TABLE_RESYNC_INTERVAL,
    agent_version, build_kad, capabilities_from_agent, capability_key, kad_protocol,
    offer_to_table, remove_unreachable, table_entries, table_len,
};
use crate::diversity::DiversityFilter;
use crate::metrics::NetworkMetrics;
use crate::peer_exchange::{
    AddrCodec, AddrRequest, AddrResponse, MAX_ADDRS_PER_RESPONSE, MAX_PEERS_PER_RESPONSE,
    peer_exchange_protocol,
};
use crate::policy::{Action, ConnectionManager, Direction, PeerInfo, Score};
use crate::protocol::{NetworkName, identify_protocol_version};

/// Commands waiting for the network task. Callers are local subsystems that await each reply,
/// so 64 in flight is far above normal use; a full channel makes callers wait (backpressure).
pub const COMMAND_CHANNEL_CAPACITY: usize = 64;

/// Events buffered per subscriber. Connection events come at most a few per second per peer;
/// 1024 covers bursts (a restart reconnecting 50 peers) with room to spare.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// How often the connection manager is polled for dials. Half a second keeps reconnection
/// prompt at negligible cost (the poll is a scan of at most a few thousand book records).
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// How often the address book is saved while running (it is also saved at shutdown). A crash
/// loses at most this much address knowledge, and a minute is nothing to the chain database.
pub const ADDRESS_BOOK_SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest wait for the listeners to come up at start.
pub const LISTEN_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a manual [`NetworkHandle::connect`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for connections to close cleanly at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Connections per peer: two, so that simultaneous dials by both ends both establish and the
/// connection manager closes the same one at both ends (see `ConnectionManager::on_established`).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;

/// Established connections allowed above `max_peers` and the probation slots
/// (`policy::PROBATION_SLOTS`): duplicates and evicted peers take a moment to close, and the
/// manager, not libp2p, must decide who goes.
pub const CONNECTION_HEADROOM: u32 = 8;

/// Default refill interval of the per-peer peer-exchange token bucket; the value lives in
/// `NetworkConfig::addr_response_interval` (see [`DEFAULT_ADDR_RESPONSE_INTERVAL`]). A peer
/// whose bucket is empty gets an empty answer.
pub const MIN_ADDR_RESPONSE_INTERVAL: Duration = DEFAULT_ADDR_RESPONSE_INTERVAL;

/// Extra time a caller of a DHT lookup waits beyond [`FIND_PEERS_TIMEOUT`] for the network
/// task to answer with what it found by then.
pub const LOOKUP_REPLY_SLACK: Duration = Duration::from_secs(5);

/// Concurrent peer-exchange streams per connection: we send one request per peer at a time, and
/// an honest peer does the same.
pub const MAX_ADDR_STREAMS: usize = 2;

/// Time a connection may stay open without streams once no handler wants it. The connection
/// manager's handler keeps every connection it wants alive (inbound peers, our own dials), so
/// this only closes the connections a DHT lookup opened, once the lookup is done with them.
const IDLE_CONNECTION_TIMEOUT: Duration = crate::policy::DISCOVERY_CONNECTION_GRACE;

/// Errors of the network service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The configuration is invalid.
    #[error("invalid network configuration: {0}")]
    Config(#[from] ConfigError),
    /// Building the transports failed.
    #[error("cannot build the TLS transports: {0}")]
    Transport(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}; pick another address or port in listen_addrs")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The listeners did not come up in time.
    #[error("listeners did not start within {0:?}")]
    ListenTimeout(Duration),
    /// The address book store failed to load.
    #[error(transparent)]
    AddressBook(#[from] AddrBookError),
    /// A dial failed.
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A manual connect did not finish in time.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Multiaddr),
    /// The peer is not connected.
    #[error("peer {0} is not connected")]
    NotConnected(PeerId),
    /// The network task has stopped.
    #[error("the network service has stopped")]
    Stopped,
    /// mDNS could not start.
    #[error("cannot start mDNS: {0}; turn it off with --no-mdns (NetworkConfig::mdns)")]
    Mdns(String),
    /// The DHT is turned off, so the lookup cannot run.
    #[error("the DHT is disabled (--no-dht); enable it to look peers up")]
    DhtDisabled,
    /// Too many DHT lookups are in flight.
    #[error("too many DHT lookups in flight ({MAX_PENDING_LOOKUPS}); retry shortly")]
    Busy,
    /// Not exactly one known capability was asked for.
    #[error("look up one capability at a time (ai-compute, validator or archive), not {0:?}")]
    InvalidCapability(Capabilities),
    /// A DHT lookup did not answer in time.
    #[error("the DHT lookup timed out")]
    LookupTimeout,
}

/// Something that happened on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkEvent {
    /// A peer is now connected (its first connection).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Who dialled.
        direction: Direction,
        /// Its address on this connection.
        addr: Multiaddr,
    },
    /// A peer's last connection closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// An inbound connection was refused.
    InboundRefused {
        /// The remote address.
        addr: Multiaddr,
        /// Why, in words.
        reason: String,
    },
    /// Now listening on an address.
    Listening(Multiaddr),
    /// A connected peer identified itself (after connecting, and again whenever it pushes an
    /// update): what it offers.
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// Its capabilities (none for a peer that declares none or runs other software).
        capabilities: Capabilities,
        /// Its software, as it claims.
        agent_version: String,
    },
}

enum Command {
    Connect {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetworkError>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    KnownPeers {
        reply: oneshot::Sender<usize>,
    },
    SetScore {
        peer: PeerId,
        score: Score,
    },
    MarkUseful {
        peer: PeerId,
    },
    Ban {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Unban {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    BanIp {
        ip: std::net::IpAddr,
        ban: bool,
        reply: oneshot::Sender<bool>,
    },
    FindPeersWith {
        capability: Capabilities,
        reply: FindReply,
    },
    ClosestPeers {
        target: PeerId,
        reply: ClosestReply,
    },
    DhtStatus {
        reply: oneshot::Sender<DhtStatus>,
    },
    Redial {
        reply: oneshot::Sender<usize>,
    },
    SetExtraOutbound {
        open: bool,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable handle to the network task.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NetworkEvent>,
    local_peer_id: PeerId,
    streams: libp2p_stream::Control,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkHandle")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl NetworkHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkError::Stopped)?;
        rx.await.map_err(|_| NetworkError::Stopped)
    }

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Dials `addr` (ending in `/p2p/<id>` to authenticate the peer, or not) and returns once
    /// connected or with a clear error; at most [`CONNECT_TIMEOUT`].
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerId, NetworkError> {
        let fut = self.request(|reply| Command::Connect {
            addr: addr.clone(),
            reply,
        });
        match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
            Ok(result) => result?,
            Err(_) => Err(NetworkError::ConnectTimeout(addr)),
        }
    }

    /// Closes every connection to `peer`.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.request(|reply| Command::Disconnect { peer, reply })
            .await?
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkError> {
        self.request(|reply| Command::Peers { reply }).await
    }

    /// The addresses we listen on.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.request(|reply| Command::ListenAddrs { reply }).await
    }

    /// Number of peers in the address book.
    pub async fn known_peers(&self) -> Result<usize, NetworkError> {
        self.request(|reply| Command::KnownPeers { reply }).await
    }

    /// Sets a peer's reputation score (used to protect good peers from eviction).
    pub async fn set_score(&self, peer: PeerId, score: Score) -> Result<(), NetworkError> {
        self.commands
            .send(Command::SetScore { peer, score })
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Records that `peer` just delivered a new block or transaction.
    pub async fn mark_useful(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.commands
            .send(Command::MarkUseful { peer })
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Peers offering `capability` (exactly one of ai-compute, validator, archive): the
    /// connected peers that declared it, plus, when the DHT runs, the providers of its DHT key
    /// (ai-compute and archive are announced there). At most [`MAX_CAPABLE_PEERS`]; returns
    /// what it found after at most [`FIND_PEERS_TIMEOUT`]. Never includes this node.
    pub async fn find_peers_with(
        &self,
        capability: Capabilities,
    ) -> Result<Vec<CapablePeer>, NetworkError> {
        let fut = self.request(|reply| Command::FindPeersWith { capability, reply });
        match tokio::time::timeout(FIND_PEERS_TIMEOUT + LOOKUP_REPLY_SLACK, fut).await {
            Ok(result) => result?,
            Err(_) => Err(NetworkError::LookupTimeout),
        }
    }

    /// The peers closest to `target` in the DHT (a Kademlia `FIND_NODE` lookup, at most `k` =
    /// 20 peers, at most [`FIND_PEERS_TIMEOUT`]). The peers found also go to the address book.
    pub async fn closest_peers(&self, target: PeerId) -> Result<Vec<PeerId>, NetworkError> {
        let fut = self.request(|reply| Command::ClosestPeers { target, reply });
        match tokio::time::timeout(FIND_PEERS_TIMEOUT + LOOKUP_REPLY_SLACK, fut).await {
            Ok(result) => result?,
            Err(_) => Err(NetworkError::LookupTimeout),
        }
    }

    /// Whether the DHT runs, in which mode, and the size of its routing table.
    pub async fn dht_status(&self) -> Result<DhtStatus, NetworkError> {
        self.request(|reply| Command::DhtStatus { reply }).await
    }

    /// A control to accept and open raw streams of the protocols built on this network (relay,
    /// sync). Each protocol should `accept` its id once and keep its own clone of the control
    /// for opening (a control opens one stream at a time). `open_stream` dials a peer that is not
    /// connected: open streams only to peers from [`NetworkEvent::PeerConnected`].
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Bans `peer` until [`NetworkHandle::unban`]: its connections close, it is refused at the
    /// handshake and never dialled. The caller (the reputation service) owns the expiry and the
    /// persistence. `false` when refused (a persistent peer, or the ban table is full).
    pub async fn ban(&self, peer: PeerId) -> Result<bool, NetworkError> {
        self.request(|reply| Command::Ban { peer, reply }).await
    }

    /// Lifts a ban; `false` if the peer was not banned.
    pub async fn unban(&self, peer: PeerId) -> Result<bool, NetworkError> {
        self.request(|reply| Command::Unban { peer, reply }).await
    }

    /// Bans (`ban = true`) or unbans an IP address: connections from it are refused.
    pub async fn ban_ip(&self, ip: std::net::IpAddr, ban: bool) -> Result<bool, NetworkError> {
        self.request(|reply| Command::BanIp { ip, ban, reply })
            .await
    }

    /// Dials the address book now, up to the outbound target, past the dial backoffs of peers
    /// we have held a connection to (see [`ConnectionManager::redial`]): partition recovery, so
    /// that peers that were unreachable during a split are tried again at once. Returns the number of dials started (none at the
    /// target, or when the book has no candidate).
    pub async fn redial_address_book(&self) -> Result<usize, NetworkError> {
        self.request(|reply| Command::Redial { reply }).await
    }

    /// Opens (`true`) or closes one outbound slot beyond the target: the stale-tip check (see
    /// [`ConnectionManager::set_extra_outbound`]). Opening dials one more peer at once; closing
    /// disconnects the least useful outbound peer when there is one too many.
    pub async fn set_extra_outbound(&self, open: bool) -> Result<(), NetworkError> {
        self.request(|reply| Command::SetExtraOutbound { open, reply })
            .await
    }

    /// Subscribes to network events.
    pub fn subscribe(&self) -> broadcast::Receiver<NetworkEvent> {
        self.events.subscribe()
    }

    /// Saves the address book, closes all connections and stops the task.
    pub async fn shutdown(&self) -> Result<(), NetworkError> {
        self.request(|reply| Command::Shutdown { reply }).await
    }
}

fn build_swarm(
    config: &NetworkConfig,
    keypair: Keypair,
    manager: ConnectionManager,
    metrics: NetworkMetrics,
    registry: Option<&mut Registry>,
) -> Result<Swarm<NodeBehaviour>, NetworkError> {
    let tcp = libp2p::tcp::Config::default().nodelay(true);
    let addr_protocol = peer_exchange_protocol(&config.network).map_err(ConfigError::from)?;
    let max_total = u32::try_from(config.max_peers + crate::policy::PROBATION_SLOTS)
        .unwrap_or(u32::MAX)
        .saturating_add(CONNECTION_HEADROOM);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(config.max_pending_incoming))
        .with_max_pending_outgoing(Some(config.max_pending_outgoing))
        .with_max_established(Some(max_total))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER));
    let ping = ping::Config::new()
        .with_interval(config.heartbeat_interval)
        .with_timeout(config.heartbeat_timeout);
    let identify_cfg =
        identify::Config::new(identify_protocol_version(&config.network), keypair.public())
            .with_agent_version(agent_version(config.capabilities))
            // We keep addresses in our own book; identify's cache would duplicate it.
            .with_cache_size(0);
    let memory_fraction = f64::from(config.max_memory_percent) / 100.0;
    let local = keypair.public().to_peer_id();
    let kad = if config.dht {
        Some(build_kad(&config.network, local, config.dht_mode).map_err(ConfigError::from)?)
    } else {
        None
    };
    let mdns = if config.mdns {
        let cfg = mdns::Config {
            ttl: MDNS_TTL,
            query_interval: MDNS_QUERY_INTERVAL,
            enable_ipv6: false,
        };
        Some(
            mdns::tokio::Behaviour::new(cfg, local)
                .map_err(|e| NetworkError::Mdns(e.to_string()))?,
        )
    } else {
        None
    };
    let behaviour = |_: &Keypair| NodeBehaviour {
        limits: connection_limits::Behaviour::new(limits),
        memory: memory_connection_limits::Behaviour::with_max_percentage(memory_fraction),
        gate: Gatekeeper::new(manager, metrics),
        ping: ping::Behaviour::new(ping),
        identify: identify::Behaviour::new(identify_cfg),
        addrs: request_response::Behaviour::with_codec(
            AddrCodec,
            [(addr_protocol, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_max_concurrent_streams(MAX_ADDR_STREAMS),
        ),
        streams: libp2p_stream::Behaviour::new(),
        kad: Toggle::from(kad),
        mdns: Toggle::from(mdns),
    };
    let swarm_config =
        |c: libp2p::swarm::Config| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT);
    let delay = config.link_delay.clone();
    let transports = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_other_transport(|key| {
            crate::latency::tcp_transport(key, tcp, delay)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        })
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| NetworkError::Transport(format!("cannot read the DNS configuration: {e}")))?;
    // Building a behaviour cannot fail (`behaviour` returns it directly).
    let swarm = match registry {
        Some(registry) => transports
            .with_bandwidth_metrics(registry)
            .with_behaviour(behaviour)
            .map_err(|e| NetworkError::Transport(e.to_string()))?
            .with_swarm_config(swarm_config)
            .build(),
        None => transports
            .with_behaviour(behaviour)
            .map_err(|e| NetworkError::Transport(e.to_string()))?
            .with_swarm_config(swarm_config)
            .build(),
    };
    Ok(swarm)
}

/// Starts the network: validates `config`, builds the transports, listens on every configured
/// address (failing clearly if one cannot be bound), loads the address book from `store` and
/// spawns the task that owns the swarm. Returns the handle and the task.
pub async fn start(
    config: NetworkConfig,
    keypair: Keypair,
    store: Box<dyn AddressBookStore>,
) -> Result<(NetworkHandle, JoinHandle<()>), NetworkError> {
    let (handle, task, _) = start_inner(config, keypair, store, None).await?;
    Ok((handle, task))
}

/// Like [`start`], and registers the network's metrics (ours, libp2p's swarm, ping and identify
/// metrics, and bytes per transport) in `registry`, typically a `net` sub-registry of the
/// node's. Returns the metrics too, e.g. for a status line.
pub async fn start_with_metrics(
    config: NetworkConfig,
    keypair: Keypair,
    store: Box<dyn AddressBookStore>,
    registry: &mut Registry,
) -> Result<(NetworkHandle, JoinHandle<()>, NetworkMetrics), NetworkError> {
    start_inner(config, keypair, store, Some(registry)).await
}

async fn start_inner(
    config: NetworkConfig,
    keypair: Keypair,
    store: Box<dyn AddressBookStore>,
    mut registry: Option<&mut Registry>,
) -> Result<(NetworkHandle, JoinHandle<()>, NetworkMetrics), NetworkError> {
    config.validate()?;
    let local_peer_id = keypair.public().to_peer_id();
    let book = match AddressBook::load(store.as_ref()) {
        Ok(book) => book,
        Err(AddrBookError::Corrupt(why)) => {
            tracing::warn!(%why, "address book is corrupt; starting with an empty one");
            AddressBook::new()
        }
        Err(err) => return Err(err.into()),
    };
    tracing::info!(peer_id = %local_peer_id, network = %config.network, known_peers = book.len(), "starting network");
    let manager = ConnectionManager::new(local_peer_id, &config, book);
    let (metrics, libp2p_metrics) = match registry.as_deref_mut() {
        Some(registry) => (
            NetworkMetrics::register(registry),
            Some(libp2p::metrics::Metrics::new(registry)),
        ),
        None => (NetworkMetrics::default(), None),
    };
    let mut swarm = build_swarm(&config, keypair, manager, metrics.clone(), registry)?;
    for addr in &config.external_addrs {
        // Declared by the operator: announced in identify, and it makes an `Auto` DHT a server.
        swarm.add_external_address(addr.clone());
    }
    let behaviour = swarm.behaviour_mut();
    let server = behaviour
        .kad
        .as_ref()
        .is_some_and(|k| k.mode() == kad::Mode::Server);
    behaviour.gate.manager_mut().set_dht_server(server);

    let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
    let mut listeners: HashMap<ListenerId, Multiaddr> = HashMap::new();
    for addr in &config.listen_addrs {
        preflight_tcp_bind(addr)?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: describe_error(&e),
            })?;
        listeners.insert(id, addr.clone());
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_STARTUP_TIMEOUT;
    let mut up: HashSet<ListenerId> = HashSet::new();
    while up.len() < listeners.len() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| NetworkError::ListenTimeout(LISTEN_STARTUP_TIMEOUT))?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                up.insert(listener_id);
                listen_addrs.push(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let addr = listeners
                    .get(&listener_id)
                    .cloned()
                    .unwrap_or_else(Multiaddr::empty);
                let reason = reason
                    .err()
                    .map_or_else(|| "listener closed".to_owned(), |e| describe_error(&e));
                return Err(NetworkError::Listen { addr, reason });
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                let addr = listeners
                    .get(&listener_id)
                    .cloned()
                    .unwrap_or_else(Multiaddr::empty);
                return Err(NetworkError::Listen {
                    addr,
                    reason: describe_error(&error),
                });
            }
            _ => {}
        }
    }

    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let handle = NetworkHandle {
        commands: commands_tx,
        events: events.clone(),
        local_peer_id,
        streams: swarm.behaviour().streams.new_control(),
    };
    let service = Service {
        swarm,
        commands: commands_rx,
        events,
        store,
        listen_addrs,
        pending_connects: HashMap::new(),
        addr_limiter: RateLimiter::new(
            1.0 / config.addr_response_interval.as_secs_f64(),
            f64::from(config.addr_response_burst),
        ),
        metrics: metrics.clone(),
        libp2p_metrics,
        allow_local_addresses: config.allow_local_addresses,
        identify_version: identify_protocol_version(&config.network),
        kad_protocol: kad_protocol(&config.network).map_err(ConfigError::from)?,
        capability_keys: capability_keys(&config.network),
        announce: ANNOUNCED_CAPABILITIES
            .iter()
            .filter(|c| config.capabilities.contains(**c))
            .filter_map(|c| capability_key(&config.network, *c))
            .collect(),
        scheduler: DiscoveryScheduler::new(
            Instant::now(),
            ANNOUNCED_CAPABILITIES
                .iter()
                .any(|c| config.capabilities.contains(*c)),
        ),
        diversity: DiversityFilter::new(local_peer_id, config.allow_local_addresses),
        last_resync: Instant::now(),
        lookups: HashMap::new(),
        deferred_quota_lookup: None,
        network: config.network.clone(),
    };
    let task = tokio::spawn(service.run());
    Ok((handle, task, metrics))
}

type ConnectReply = oneshot::Sender<Result<PeerId, NetworkError>>;
type FindReply = oneshot::Sender<Result<Vec<CapablePeer>, NetworkError>>;
type ClosestReply = oneshot::Sender<Result<Vec<PeerId>, NetworkError>>;

/// The DHT key of every capability that may be announced, to accept provider records for them
/// (and nothing else) and to map lookups back to capabilities.
fn capability_keys(network: &NetworkName) -> HashMap<RecordKey, Capabilities> {
    ANNOUNCED_CAPABILITIES
        .iter()
        .filter_map(|c| capability_key(network, *c).map(|k| (k, *c)))
        .collect()
}

/// A DHT lookup in flight, by what it is for.
enum Lookup {
    /// [`NetworkHandle::find_peers_with`]: providers found so far.
    Find {
        capability: Capabilities,
        found: Vec<PeerId>,
        reply: FindReply,
        deadline: Instant,
    },
    /// [`NetworkHandle::closest_peers`].
    Closest {
        reply: ClosestReply,
        deadline: Instant,
    },
    /// The connection manager wants AI-capable peers for its quota.
    Quota { capability: Capabilities },
    /// Finding the addresses of a provider we found but cannot dial.
    Resolve {
        peer: PeerId,
        capability: Capabilities,
    },
    /// A random walk filling the address book.
    Walk,
}

struct Service {
    swarm: Swarm<NodeBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetworkEvent>,
    store: Box<dyn AddressBookStore>,
    listen_addrs: Vec<Multiaddr>,
    pending_connects: HashMap<ConnectionId, (Multiaddr, ConnectReply)>,
    /// Per-peer token buckets of peer exchange answers (bounded by `rate::MAX_BUCKETS`).
    addr_limiter: RateLimiter<PeerId>,
    metrics: NetworkMetrics,
    libp2p_metrics: Option<libp2p::metrics::Metrics>,
    allow_local_addresses: bool,
    identify_version: String,
    /// Our DHT protocol id, to recognise peers that serve the DHT from their identify message.
    kad_protocol: StreamProtocol,
    capability_keys: HashMap<RecordKey, Capabilities>,
    /// The capability keys we announce as a provider.
    announce: Vec<RecordKey>,
    scheduler: DiscoveryScheduler,
    diversity: DiversityFilter,
    last_resync: Instant,
    /// DHT lookups in flight; bounded by [`MAX_PENDING_LOOKUPS`] (callers),
    /// [`MAX_PROVIDER_RESOLVES`] (resolves), one quota lookup and one walk.
    lookups: HashMap<QueryId, Lookup>,
    /// A quota lookup asked for while the routing table was empty.
    deferred_quota_lookup: Option<Capabilities>,
    network: NetworkName,
}

impl Service {
    async fn run(mut self) {
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save = tokio::time::interval(ADDRESS_BOOK_SAVE_INTERVAL);
        save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        save.reset();
        loop {
            tokio::select! {
                // Local commands before remote work.
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                _ = maintenance.tick() => self.maintain(),
                _ = save.tick() => self.save_book(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
    }

    fn maintain(&mut self) {
        let now = Instant::now();
        let gate = &mut self.swarm.behaviour_mut().gate;
        let actions = gate.manager_mut().poll(now);
        gate.apply(actions);
        self.maintain_dht(now);
        let manager = self.swarm.behaviour().gate.manager();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .peers_inbound
            .set(gauge(manager.count(Direction::Inbound)));
        self.metrics
            .peers_outbound
            .set(gauge(manager.count(Direction::Outbound)));
        self.metrics.known_peers.set(gauge(manager.book().len()));
    }

    fn emit(&self, event: NetworkEvent) {
        // No subscriber is fine: events are informational.
        let _ = self.events.send(event);
    }

    fn save_book(&mut self) {
        let bytes = self.swarm.behaviour_mut().gate.manager_mut().encode_book();
        if let Err(err) = self.store.save(&bytes) {
            tracing::warn!(%err, "cannot save the address book");
        }
    }

    async fn shutdown(&mut self) {
        self.save_book();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.on_swarm_event(event),
                Err(_) => break,
            }
        }
        for (addr, reply) in self.pending_connects.drain().map(|(_, v)| v) {
            let _ = reply.send(Err(NetworkError::Dial {
                addr,
                reason: "network is shutting down".into(),
            }));
        }
        tracing::info!("network stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect { addr, reply } => self.connect(addr, reply),
            Command::Disconnect { peer, reply } => {
                let result = self
                    .swarm
                    .disconnect_peer_id(peer)
                    .map_err(|()| NetworkError::NotConnected(peer));
                let _ = reply.send(result);
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.behaviour().gate.manager().peers());
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::KnownPeers { reply } => {
                let _ = reply.send(self.swarm.behaviour().gate.manager().book().len());
            }
            Command::SetScore { peer, score } => self
                .swarm
                .behaviour_mut()
                .gate
                .manager_mut()
                .set_score(peer, score),
            Command::Ban { peer, reply } => {
                let gate = &mut self.swarm.behaviour_mut().gate;
                let (banned, actions) = gate.manager_mut().ban(peer);
                gate.apply(actions);
                let _ = reply.send(banned);
            }
            Command::Unban { peer, reply } => {
                let lifted = self.swarm.behaviour_mut().gate.manager_mut().unban(&peer);
                let _ = reply.send(lifted);
            }
            Command::BanIp { ip, ban, reply } => {
                let manager = self.swarm.behaviour_mut().gate.manager_mut();
                let changed = if ban {
                    manager.ban_ip(ip)
                } else {
                    manager.unban_ip(&ip)
                };
                let _ = reply.send(changed);
            }
            Command::MarkUseful { peer } => {
                self.swarm
                    .behaviour_mut()
                    .gate
                    .manager_mut()
                    .mark_useful(peer, Instant::now());
            }
            Command::FindPeersWith { capability, reply } => self.find_peers_with(capability, reply),
            Command::ClosestPeers { target, reply } => self.closest_peers(target, reply),
            Command::DhtStatus { reply } => {
                let behaviour = self.swarm.behaviour_mut();
                let status = match behaviour.kad.as_mut() {
                    Some(kad) => DhtStatus {
                        enabled: true,
                        server: kad.mode() == kad::Mode::Server,
                        routing_table: table_len(kad),
                    },
                    None => DhtStatus {
                        enabled: false,
                        server: false,
                        routing_table: 0,
                    },
                };
                let _ = reply.send(status);
            }
            Command::Redial { reply } => {
                let gate = &mut self.swarm.behaviour_mut().gate;
                let actions = gate.manager_mut().redial(Instant::now());
                let dials = actions
                    .iter()
                    .filter(|a| matches!(a, Action::Dial { .. }))
                    .count();
                tracing::debug!(dials, "redialling the address book");
                gate.apply(actions);
                let _ = reply.send(dials);
            }
            Command::SetExtraOutbound { open, reply } => {
                let gate = &mut self.swarm.behaviour_mut().gate;
                let mut actions = gate.manager_mut().set_extra_outbound(open);
                if open {
                    // Dial the extra peer now rather than at the next maintenance tick.
                    actions.extend(gate.manager_mut().poll(Instant::now()));
                }
                tracing::debug!(open, "extra outbound slot");
                gate.apply(actions);
                let _ = reply.send(());
            }
            // Handled in `run`.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn connect(&mut self, addr: Multiaddr, reply: ConnectReply) {
        let (bare, peer) = split_peer_id(&addr);
        let opts = match peer {
            Some(peer) => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let manager = self.swarm.behaviour_mut().gate.manager_mut();
                manager.add_addresses(peer, vec![bare.clone()], AddrSource::Manual);
                manager.on_dial_started(peer, Instant::now());
                DialOpts::peer_id(peer)
                    .addresses(vec![bare])
                    .condition(PeerCondition::Always)
                    .build()
            }
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending_connects.insert(id, (addr, reply));
            }
            Err(err) => {
                let _ = reply.send(Err(NetworkError::Dial {
                    addr,
                    reason: describe_dial_error(&err),
                }));
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        if let Some(m) = &self.libp2p_metrics {
            m.record(&event);
            match &event {
                SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(NodeBehaviourEvent::Kad(e)) => m.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                let direction = if endpoint.is_dialer() {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                if let Some((dialled, reply)) = self.pending_connects.remove(&connection_id) {
                    if split_peer_id(&dialled).1.is_none() {
                        self.swarm.behaviour_mut().gate.manager_mut().add_addresses(
                            peer_id,
                            vec![dialled],
                            AddrSource::Manual,
                        );
                    }
                    let _ = reply.send(Ok(peer_id));
                }
                tracing::debug!(peer = %peer_id, ?direction, %addr, "connection established");
                if num_established.get() == 1 {
                    self.emit(NetworkEvent::PeerConnected {
                        peer: peer_id,
                        direction,
                        addr,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.emit(NetworkEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some((addr, reply)) = self.pending_connects.remove(&connection_id) {
                    let _ = reply.send(Err(NetworkError::Dial {
                        addr,
                        reason: describe_dial_error(&error),
                    }));
                }
                // The gatekeeper already counted the failure in the address book.
                if let Some(peer) = peer_id {
                    let failures = self
                        .swarm
                        .behaviour()
                        .gate
                        .manager()
                        .book()
                        .get(&peer)
                        .map_or(0, |r| r.failures.0);
                    if failures >= DHT_EVICT_AFTER_FAILURES
                        && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    {
                        remove_unreachable(&mut self.diversity, kad, &peer);
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let reason = match &error {
                    ListenError::Denied { cause } => describe_error(cause),
                    other => other.to_string(),
                };
                tracing::debug!(addr = %send_back_addr, %reason, "inbound connection refused");
                self.metrics.inbound_refused.inc();
                self.emit(NetworkEvent::InboundRefused {
                    addr: send_back_addr,
                    reason,
                });
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if !self.listen_addrs.contains(&address) {
                    self.listen_addrs.push(address.clone());
                }
                self.emit(NetworkEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address)
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: NodeBehaviourEvent) {
        match event {
            NodeBehaviourEvent::Ping(ping::Event { peer, result, .. }) => {
                let gate = &mut self.swarm.behaviour_mut().gate;
                match result {
                    Ok(rtt) => gate.manager_mut().on_ping(peer, rtt),
                    Err(failure) => {
                        tracing::debug!(%peer, %failure, "heartbeat failed");
                        let actions = gate.manager_mut().on_ping_failure(peer);
                        gate.apply(actions);
                    }
                }
            }
            NodeBehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            }) => self.on_identify(connection_id, peer_id, info),
            NodeBehaviourEvent::Addrs(request_response::Event::Message {
                peer, message, ..
            }) => match message {
                request_response::Message::Request { channel, .. } => {
                    let response = if self.addr_limiter.allow(peer, 1.0, Instant::now()) {
                        self.addr_response(peer)
                    } else {
                        self.metrics.addr_requests_limited.inc();
                        AddrResponse::default()
                    };
                    // Fails only if the peer already closed the stream.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .addrs
                        .send_response(channel, response);
                }
                request_response::Message::Response { response, .. } => {
                    let manager = self.swarm.behaviour_mut().gate.manager_mut();
                    for (p, addrs) in response.0 {
                        manager.add_addresses(p, addrs, AddrSource::PeerExchange);
                    }
                }
            },
            NodeBehaviourEvent::Gate(GateEvent::RequestAddrs(peer)) => {
                self.swarm
                    .behaviour_mut()
                    .addrs
                    .send_request(&peer, AddrRequest);
            }
            NodeBehaviourEvent::Gate(GateEvent::FindCapable(capability)) => {
                self.quota_lookup(capability)
            }
            NodeBehaviourEvent::Kad(event) => self.on_kad_event(event),
            NodeBehaviourEvent::Mdns(event) => self.on_mdns_event(event),
            _ => {}
        }
    }

    fn on_identify(&mut self, connection: ConnectionId, peer: PeerId, info: identify::Info) {
        let gate = &mut self.swarm.behaviour_mut().gate;
        if info.protocol_version != self.identify_version {
            tracing::info!(%peer, theirs = %info.protocol_version, "peer is on another network");
            gate.manager_mut().forget(&peer);
            gate.apply(vec![crate::policy::Action::Disconnect {
                peer,
                reason: crate::policy::DisconnectReason::WrongNetwork,
            }]);
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                kad.remove_peer(&peer);
            }
            self.diversity.remove(&peer);
            return;
        }
        let capabilities = capabilities_from_agent(&info.agent_version);
        let manager = gate.manager_mut();
        manager.on_identified(peer, capabilities);
        let remote_ip = manager.connection_ip(connection);
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        manager.add_addresses(peer, addrs.clone(), AddrSource::Identify);
        // Only peers that serve the DHT enter the routing table, and only at addresses with
        // the IP they connect from: claimed addresses elsewhere would let one host spread
        // itself over many subnets and defeat the diversity filter.
        if info.protocols.contains(&self.kad_protocol) {
            for addr in addrs {
                if remote_ip.is_some() && ip_of(&addr) == remote_ip {
                    self.offer_to_table(peer, addr);
                }
            }
        }
        self.emit(NetworkEvent::PeerIdentified {
            peer,
            capabilities,
            agent_version: info.agent_version,
        });
    }

    /// Offers `peer` at `addr` to the DHT routing table through the diversity filter.
    fn offer_to_table(&mut self, peer: PeerId, addr: Multiaddr) {
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if let Err(refusal) = offer_to_table(&mut self.diversity, kad, peer, addr, Instant::now()) {
            tracing::debug!(%peer, %refusal, "not added to the DHT routing table");
            self.metrics.dht_diversity_refusals.inc();
        }
    }

    fn on_mdns_event(&mut self, event: mdns::Event) {
        let manager = self.swarm.behaviour_mut().gate.manager_mut();
        match event {
            mdns::Event::Discovered(list) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    let addrs = by_peer.entry(peer).or_default();
                    if addrs.len() < MAX_ADDRS_PER_PEER {
                        addrs.push(addr);
                    }
                }
                for (peer, addrs) in by_peer {
                    tracing::debug!(%peer, ?addrs, "discovered on the local network");
                    self.metrics.mdns_discovered.inc();
                    manager.add_addresses(peer, addrs, AddrSource::Mdns);
                }
            }
            mdns::Event::Expired(list) => {
                for (peer, addr) in list {
                    manager.on_addr_expired(&peer, &addr);
                }
            }
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address } => self.offer_to_table(peer, address),
            kad::Event::RoutingUpdated { peer, old_peer, .. } => {
                self.diversity.confirm(&peer);
                if let Some(old) = old_peer {
                    self.diversity.remove(&old);
                }
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => {
                // Only capability keys are stored; Kademlia already checked that the record
                // names its sender as the provider.
                if self.capability_keys.contains_key(&record.key)
                    && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    && let Err(err) = kad.store_mut().add_provider(record)
                {
                    tracing::debug!(%err, "provider record not stored");
                }
            }
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(mode = %new_mode, "DHT mode changed");
                self.swarm
                    .behaviour_mut()
                    .gate
                    .manager_mut()
                    .set_dht_server(new_mode == kad::Mode::Server);
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                self.on_query_result(id, result);
                if step.last {
                    self.finish_lookup(id);
                }
            }
            _ => {}
        }
    }

    fn on_query_result(&mut self, id: QueryId, result: QueryResult) {
        match result {
            QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                providers,
                ..
            })) => self.on_providers(id, providers),
            QueryResult::GetClosestPeers(result) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                let manager = self.swarm.behaviour_mut().gate.manager_mut();
                for info in &peers {
                    let addrs = info
                        .addrs
                        .iter()
                        .take(MAX_ADDRS_PER_PEER)
                        .cloned()
                        .collect();
                    manager.add_addresses(info.peer_id, addrs, AddrSource::Dht);
                }
                match self.lookups.remove(&id) {
                    Some(Lookup::Resolve { peer, capability }) => {
                        manager.note_capabilities(peer, capability);
                    }
                    Some(Lookup::Closest { reply, .. }) => {
                        let _ = reply.send(Ok(peers.into_iter().map(|p| p.peer_id).collect()));
                    }
                    Some(other) => {
                        self.lookups.insert(id, other);
                    }
                    None => {}
                }
            }
            QueryResult::StartProviding(Err(err)) => {
                tracing::debug!(%err, "capability announcement incomplete");
            }
            QueryResult::Bootstrap(Err(err)) => tracing::debug!(%err, "DHT bootstrap failed"),
            _ => {}
        }
    }

    /// Providers of a capability key found by a lookup: remembered with their capability,
    /// resolved to addresses when the book has none, and collected for a caller.
    fn on_providers(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let capability = match self.lookups.get(&id) {
            Some(Lookup::Find { capability, .. } | Lookup::Quota { capability }) => *capability,
            _ => return,
        };
        let mut full = false;
        for peer in providers.into_iter().filter(|p| *p != local) {
            let manager = self.swarm.behaviour_mut().gate.manager_mut();
            manager.note_capabilities(peer, capability);
            let known = manager.book().get(&peer).is_some() || manager.is_connected(&peer);
            if !known {
                self.resolve(peer, capability);
            }
            if let Some(Lookup::Find { found, .. }) = self.lookups.get_mut(&id)
                && !found.contains(&peer)
                && found.len() < MAX_CAPABLE_PEERS
            {
                found.push(peer);
                full = found.len() >= MAX_CAPABLE_PEERS;
            }
        }
        if full {
            if let Some(mut query) = self
                .swarm
                .behaviour_mut()
                .kad
                .as_mut()
                .and_then(|k| k.query_mut(&id))
            {
                query.finish();
            }
            self.finish_lookup(id);
        }
    }

    /// Starts a lookup of `peer`'s addresses (a provider lookup returns only ids).
    fn resolve(&mut self, peer: PeerId, capability: Capabilities) {
        let resolving = self
            .lookups
            .values()
            .filter(|l| matches!(l, Lookup::Resolve { .. }))
            .count();
        let already = self
            .lookups
            .values()
            .any(|l| matches!(l, Lookup::Resolve { peer: p, .. } if *p == peer));
        if resolving >= MAX_PROVIDER_RESOLVES || already {
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let id = kad.get_closest_peers(peer);
            self.lookups
                .insert(id, Lookup::Resolve { peer, capability });
        }
    }

    /// A lookup is over (Kademlia's last step, enough results, or our deadline): answer its
    /// caller with what it found.
    fn finish_lookup(&mut self, id: QueryId) {
        match self.lookups.remove(&id) {
            Some(Lookup::Find {
                capability,
                found,
                reply,
                ..
            }) => {
                let peers = self.capable_peers(capability, found);
                let _ = reply.send(Ok(peers));
            }
            Some(Lookup::Closest { reply, .. }) => {
                let _ = reply.send(Err(NetworkError::LookupTimeout));
            }
            _ => {}
        }
    }

    /// Connected peers that declared `capability`, then `providers`, as [`CapablePeer`]s.
    fn capable_peers(&self, capability: Capabilities, providers: Vec<PeerId>) -> Vec<CapablePeer> {
        let manager = self.swarm.behaviour().gate.manager();
        let mut peers: Vec<PeerId> = manager
            .peers()
            .into_iter()
            .filter(|i| i.capabilities.contains(capability))
            .map(|i| i.peer)
            .collect();
        for p in providers {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        let connected: HashMap<PeerId, Capabilities> = manager
            .peers()
            .into_iter()
            .map(|i| (i.peer, i.capabilities))
            .collect();
        peers
            .into_iter()
            .take(MAX_CAPABLE_PEERS)
            .map(|peer| {
                let record = manager.book().get(&peer);
                let known = connected
                    .get(&peer)
                    .copied()
                    .or(record.map(|r| r.capabilities))
                    .unwrap_or(Capabilities::NONE);
                CapablePeer {
                    peer,
                    capabilities: known.with(capability),
                    connected: connected.contains_key(&peer),
                    addrs: record
                        .map(|r| r.addrs.iter().map(|e| e.addr.clone()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    fn caller_lookups(&self) -> usize {
        self.lookups
            .values()
            .filter(|l| matches!(l, Lookup::Find { .. } | Lookup::Closest { .. }))
            .count()
    }

    fn find_peers_with(&mut self, capability: Capabilities, reply: FindReply) {
        let key = match capability_key(&self.network, capability) {
            Some(key) => key,
            None if capability.names().len() == 1 => {
                // A capability that is never announced (validator): connected peers only.
                let _ = reply.send(Ok(self.capable_peers(capability, Vec::new())));
                return;
            }
            None => {
                let _ = reply.send(Err(NetworkError::InvalidCapability(capability)));
                return;
            }
        };
        if !self.capability_keys.contains_key(&key) {
            let _ = reply.send(Ok(self.capable_peers(capability, Vec::new())));
            return;
        }
        if self.caller_lookups() >= MAX_PENDING_LOOKUPS {
            let _ = reply.send(Err(NetworkError::Busy));
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            let _ = reply.send(Ok(self.capable_peers(capability, Vec::new())));
            return;
        };
        let id = kad.get_providers(key);
        self.lookups.insert(
            id,
            Lookup::Find {
                capability,
                found: Vec::new(),
                reply,
                deadline: Instant::now() + FIND_PEERS_TIMEOUT,
            },
        );
    }

    fn closest_peers(&mut self, target: PeerId, reply: ClosestReply) {
        if self.caller_lookups() >= MAX_PENDING_LOOKUPS {
            let _ = reply.send(Err(NetworkError::Busy));
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            let _ = reply.send(Err(NetworkError::DhtDisabled));
            return;
        };
        let id = kad.get_closest_peers(target);
        self.lookups.insert(
            id,
            Lookup::Closest {
                reply,
                deadline: Instant::now() + FIND_PEERS_TIMEOUT,
            },
        );
    }

    /// The connection manager wants peers with `capability` for its quota. The lookup starts
    /// now, or as soon as the routing table has an entry (a lookup from an empty table finds
    /// nothing).
    fn quota_lookup(&mut self, capability: Capabilities) {
        if self
            .lookups
            .values()
            .any(|l| matches!(l, Lookup::Quota { .. }))
        {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        match capability_key(&self.network, capability) {
            Some(key) if table_len(kad) > 0 => {
                let id = kad.get_providers(key);
                self.lookups.insert(id, Lookup::Quota { capability });
                self.deferred_quota_lookup = None;
            }
            Some(_) => self.deferred_quota_lookup = Some(capability),
            None => {}
        }
    }

    /// DHT housekeeping on the maintenance tick: random walks and announcements when due,
    /// caller deadlines, and the periodic diversity-filter resync.
    fn maintain_dht(&mut self, now: Instant) {
        let short = self.swarm.behaviour().gate.manager().short_of_candidates();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let table = table_len(kad);
        self.metrics
            .dht_routing_table_peers
            .set(i64::try_from(table).unwrap_or(i64::MAX));
        if table > 0
            && let Some(capability) = self.deferred_quota_lookup.take()
        {
            self.quota_lookup(capability);
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for action in self.scheduler.poll(now, table, short) {
            match action {
                DiscoveryAction::RandomWalk => {
                    if !self.lookups.values().any(|l| matches!(l, Lookup::Walk)) {
                        let id = kad.get_closest_peers(PeerId::random());
                        self.lookups.insert(id, Lookup::Walk);
                    }
                }
                DiscoveryAction::Announce => {
                    for key in &self.announce {
                        if let Err(err) = kad.start_providing(key.clone()) {
                            tracing::warn!(%err, "cannot announce a capability");
                        }
                    }
                }
            }
        }
        let expired: Vec<QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| match l {
                Lookup::Find { deadline, .. } | Lookup::Closest { deadline, .. } => {
                    now >= *deadline
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let closest = matches!(self.lookups.get(&id), Some(Lookup::Closest { .. }));
            let running = match self
                .swarm
                .behaviour_mut()
                .kad
                .as_mut()
                .and_then(|k| k.query_mut(&id))
            {
                Some(mut query) => {
                    query.finish();
                    true
                }
                None => false,
            };
            if closest && running {
                // Kademlia reports the peers it has at its next poll, and that answers the
                // caller; if it does not, the extended deadline does.
                if let Some(Lookup::Closest { deadline, .. }) = self.lookups.get_mut(&id) {
                    *deadline = now + LOOKUP_REPLY_SLACK;
                }
            } else {
                self.finish_lookup(id);
            }
        }
        if now.saturating_duration_since(self.last_resync) >= ROUTING_TABLE_RESYNC_INTERVAL {
            self.last_resync = now;
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                self.diversity.resync(table_entries(kad), now);
            }
        }
    }

    /// Addresses to share with `asker`: known-good ones only, i.e. verified by a dial of ours,
    /// or announced by a connected peer at the IP it is connected from (it is live there); our
    /// connected peers first, then the most recently seen; never the asker's, and (unless
    /// allowed) no local addresses. At most [`MAX_PEERS_PER_RESPONSE`] peers and
    /// [`MAX_ADDRS_PER_RESPONSE`] addresses.
    fn addr_response(&self, asker: PeerId) -> AddrResponse {
        let manager = self.swarm.behaviour().gate.manager();
        let book = manager.book();
        let connected: HashMap<PeerId, Option<std::net::IpAddr>> = manager
            .peers()
            .into_iter()
            .map(|p| (p.peer, p.ip))
            .collect();
        let mut out = Vec::new();
        let mut budget = MAX_ADDRS_PER_RESPONSE;
        let mut records: Vec<_> = book.records().collect();
        records.sort_by_key(|r| {
            (
                !connected.contains_key(&r.peer),
                std::cmp::Reverse(r.last_seen),
                r.peer,
            )
        });
        for record in records {
            if out.len() >= MAX_PEERS_PER_RESPONSE || budget == 0 {
                break;
            }
            if record.peer == asker {
                continue;
            }
            let live_ip = connected.get(&record.peer).copied().flatten();
            let addrs: Vec<Multiaddr> = record
                .addrs
                .iter()
                .filter(|e| e.verified || (live_ip.is_some() && ip_of(&e.addr) == live_ip))
                .map(|e| &e.addr)
                .filter(|a| self.allow_local_addresses || crate::addrbook::is_global(a))
                .take(budget)
                .cloned()
                .collect();
            if !addrs.is_empty() {
                budget -= addrs.len();
                out.push((record.peer, addrs));
            }
        }
        AddrResponse(out)
    }
}

/// libp2p binds TCP listeners with `SO_REUSEPORT` (so dials can reuse the port), which lets a
/// second node of the same user silently share a port with the first and steal half its
/// connections. Binding the port once without it first turns that into a clear error.
fn preflight_tcp_bind(addr: &Multiaddr) -> Result<(), NetworkError> {
    use libp2p::multiaddr::Protocol;
    let mut iter = addr.iter();
    let ip: std::net::IpAddr = match iter.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    match iter.next() {
        Some(Protocol::Tcp(port)) if port != 0 => std::net::TcpListener::bind((ip, port))
            .map(drop)
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            }),
        _ => Ok(()),
    }
}

/// An error with its source chain (transport errors often wrap the useful part).
fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = s.source();
    }
    if out.is_empty() {
        format!("{error:?}")
    } else {
        out
    }
}

fn describe_dial_error(error: &DialError) -> String {
    match error {
        DialError::WrongPeerId { obtained, address } => {
            format!("the node at {address} is {obtained}, not the peer named in the address")
        }
        DialError::Denied { cause } => format!("refused locally: {}", describe_error(cause)),
        other => other.to_string(),
    }
}
