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
use libp2p::metrics::{Recorder, Registry};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, ListenError, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, connection_limits, identify, memory_connection_limits,
    ping, request_response,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::addrbook::{AddrBookError, AddrSource, AddressBook, AddressBookStore, split_peer_id};
use crate::behaviour::{Gatekeeper, NodeBehaviour, NodeBehaviourEvent};
use crate::config::{ConfigError, NetworkConfig};
use crate::metrics::NetworkMetrics;
use crate::peer_exchange::{
    AddrCodec, AddrRequest, AddrResponse, MAX_PEERS_PER_RESPONSE, peer_exchange_protocol,
};
use crate::policy::{ConnectionManager, Direction, PeerInfo, Score};
use crate::protocol::identify_protocol_version;

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

/// Established connections allowed above `max_peers`: duplicates and evicted peers take a moment
/// to close, and the manager, not libp2p, must decide who goes.
pub const CONNECTION_HEADROOM: u32 = 8;

/// Least time between two address responses to the same peer; a peer asking more often gets an
/// empty answer. Honest peers ask at most once per `addr_request_interval` (a minute by
/// default), so half a second only ever stops a peer that spams requests to make us work.
pub const MIN_ADDR_RESPONSE_INTERVAL: Duration = Duration::from_millis(500);

/// Concurrent peer-exchange streams per connection: we send one request per peer at a time, and
/// an honest peer does the same.
pub const MAX_ADDR_STREAMS: usize = 2;

/// Time a connection may stay open without streams. Connections are closed by the connection
/// manager and by heartbeats, never for idleness.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(u64::MAX);

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

    /// A control to accept and open raw streams of the protocols built on this network (relay,
    /// sync). Each protocol should `accept` its id once and keep its own clone of the control
    /// for opening (a control opens one stream at a time). `open_stream` dials a peer that is not
    /// connected: open streams only to peers from [`NetworkEvent::PeerConnected`].
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
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
    let max_total = u32::try_from(config.max_peers)
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
            .with_agent_version(format!("playergold/{}", env!("CARGO_PKG_VERSION")))
            // We keep addresses in our own book; identify's cache would duplicate it.
            .with_cache_size(0);
    let memory_fraction = f64::from(config.max_memory_percent) / 100.0;
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
        last_addr_response: HashMap::new(),
        metrics: metrics.clone(),
        libp2p_metrics,
        allow_local_addresses: config.allow_local_addresses,
        identify_version: identify_protocol_version(&config.network),
    };
    let task = tokio::spawn(service.run());
    Ok((handle, task, metrics))
}

type ConnectReply = oneshot::Sender<Result<PeerId, NetworkError>>;

struct Service {
    swarm: Swarm<NodeBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetworkEvent>,
    store: Box<dyn AddressBookStore>,
    listen_addrs: Vec<Multiaddr>,
    pending_connects: HashMap<ConnectionId, (Multiaddr, ConnectReply)>,
    /// When each connected peer last got addresses from us (bounded by the connected peers).
    last_addr_response: HashMap<PeerId, Instant>,
    metrics: NetworkMetrics,
    libp2p_metrics: Option<libp2p::metrics::Metrics>,
    allow_local_addresses: bool,
    identify_version: String,
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
        let gate = &mut self.swarm.behaviour_mut().gate;
        let actions = gate.manager_mut().poll(Instant::now());
        gate.apply(actions);
        let manager = gate.manager();
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
            Command::MarkUseful { peer } => {
                self.swarm
                    .behaviour_mut()
                    .gate
                    .manager_mut()
                    .mark_useful(peer, Instant::now());
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
                    self.last_addr_response.remove(&peer_id);
                    self.emit(NetworkEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((addr, reply)) = self.pending_connects.remove(&connection_id) {
                    let _ = reply.send(Err(NetworkError::Dial {
                        addr,
                        reason: describe_dial_error(&error),
                    }));
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
            NodeBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let gate = &mut self.swarm.behaviour_mut().gate;
                if info.protocol_version != self.identify_version {
                    tracing::info!(peer = %peer_id, theirs = %info.protocol_version, "peer is on another network");
                    gate.manager_mut().forget(&peer_id);
                    gate.apply(vec![crate::policy::Action::Disconnect {
                        peer: peer_id,
                        reason: crate::policy::DisconnectReason::WrongNetwork,
                    }]);
                    return;
                }
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .take(crate::addrbook::MAX_ADDRS_PER_PEER)
                    .collect();
                gate.manager_mut()
                    .add_addresses(peer_id, addrs, AddrSource::Identify);
            }
            NodeBehaviourEvent::Addrs(request_response::Event::Message {
                peer, message, ..
            }) => match message {
                request_response::Message::Request { channel, .. } => {
                    let now = Instant::now();
                    let too_soon = self.last_addr_response.get(&peer).is_some_and(|t| {
                        now.saturating_duration_since(*t) < MIN_ADDR_RESPONSE_INTERVAL
                    });
                    let response = if too_soon {
                        AddrResponse::default()
                    } else {
                        self.last_addr_response.insert(peer, now);
                        self.addr_response(peer)
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
            NodeBehaviourEvent::Gate(crate::behaviour::GateEvent::RequestAddrs(peer)) => {
                self.swarm
                    .behaviour_mut()
                    .addrs
                    .send_request(&peer, AddrRequest);
            }
            _ => {}
        }
    }

    /// Addresses to share with `asker`: our connected peers first, then the rest of the book,
    /// skipping the asker and (unless allowed) local addresses.
    fn addr_response(&self, asker: PeerId) -> AddrResponse {
        let manager = self.swarm.behaviour().gate.manager();
        let book = manager.book();
        let connected: Vec<PeerId> = manager.peers().into_iter().map(|p| p.peer).collect();
        let mut out = Vec::new();
        let mut records: Vec<_> = book.records().collect();
        records.sort_by_key(|r| {
            (
                !connected.contains(&r.peer),
                std::cmp::Reverse(r.last_seen),
                r.peer,
            )
        });
        for record in records {
            if out.len() >= MAX_PEERS_PER_RESPONSE {
                break;
            }
            if record.peer == asker {
                continue;
            }
            let addrs: Vec<Multiaddr> = record
                .addrs
                .iter()
                .map(|e| e.addr.clone())
                .filter(|a| self.allow_local_addresses || crate::addrbook::is_global(a))
                .collect();
            if !addrs.is_empty() {
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
