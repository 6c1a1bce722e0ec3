//! The libp2p side: the composed [`NodeBehaviour`] and the [`Gatekeeper`], a thin
//! `NetworkBehaviour` adapter around the sans-IO [`ConnectionManager`].
//!
//! The gatekeeper's per-connection handler ([`KeepAliveHandler`]) speaks no protocol; it only
//! tells the swarm whether the manager wants the connection. The swarm closes a connection once
//! no handler wants it and it has had no stream for the idle timeout, so connections the
//! manager did not ask for (DHT lookups dial peers to query them) go away by themselves once
//! Kademlia is done with them, while the peers we chose stay.
//!
//! Field order of [`NodeBehaviour`] matters: libp2p asks each field in turn and stops at the
//! first refusal, and behaviours asked earlier may already have set up per-connection state
//! (request-response does). So the refusing behaviours come first: libp2p's own limits
//! (pending, per-peer, total, memory), then the gatekeeper; the ones after it never refuse.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{ConnectionEvent, ConnectionHandlerEvent, SubstreamProtocol};
use libp2p::swarm::{
    CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionId,
    DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{
    Multiaddr, PeerId, connection_limits, identify, kad, mdns, memory_connection_limits, ping,
    request_response,
};
use playergold_protocol::Capabilities;

use crate::addrbook::{UnixTime, ip_of};
use crate::metrics::NetworkMetrics;
use crate::peer_exchange::AddrCodec;
use crate::policy::{Action, ConnectionManager, Direction, DisconnectReason};

/// The gatekeeper's connection handler: no protocol, only whether to keep the connection alive
/// (set at establishment, and to `true` when the manager adopts the connection).
#[derive(Debug)]
pub(crate) struct KeepAliveHandler {
    keep: bool,
}

impl ConnectionHandler for KeepAliveHandler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        _: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        // `DeniedUpgrade` negotiates nothing, so no stream ever reaches this handler.
    }
}

/// Events the gatekeeper reports to the service.
#[derive(Debug)]
pub(crate) enum GateEvent {
    /// Ask this peer for addresses.
    RequestAddrs(PeerId),
    /// Look up peers with these capabilities in the DHT.
    FindCapable(Capabilities),
}

/// Runs the [`ConnectionManager`]'s decisions inside the swarm.
#[derive(Debug)]
pub(crate) struct Gatekeeper {
    manager: ConnectionManager,
    metrics: NetworkMetrics,
    queue: VecDeque<ToSwarm<GateEvent, THandlerInEvent<Self>>>,
    waker: Option<Waker>,
}

impl Gatekeeper {
    /// Wraps a manager.
    pub(crate) fn new(manager: ConnectionManager, metrics: NetworkMetrics) -> Self {
        Self {
            manager,
            metrics,
            queue: VecDeque::new(),
            waker: None,
        }
    }

    /// The manager, to read.
    pub(crate) fn manager(&self) -> &ConnectionManager {
        &self.manager
    }

    /// The manager, to feed events to; queue what it returns with [`Gatekeeper::apply`].
    pub(crate) fn manager_mut(&mut self) -> &mut ConnectionManager {
        &mut self.manager
    }

    /// Queues the manager's actions for the swarm.
    pub(crate) fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            let item = match action {
                Action::Dial { peer, addrs } => ToSwarm::Dial {
                    opts: DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                },
                Action::Disconnect { peer, reason } => {
                    tracing::debug!(%peer, ?reason, "disconnecting peer");
                    match reason {
                        DisconnectReason::Evicted => self.metrics.evictions.inc(),
                        DisconnectReason::HeartbeatTimeout => self.metrics.heartbeat_failures.inc(),
                        _ => 0,
                    };
                    ToSwarm::CloseConnection {
                        peer_id: peer,
                        connection: CloseConnection::All,
                    }
                }
                Action::CloseConnection { peer, connection } => ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(connection),
                },
                Action::RequestAddrs { peer } => {
                    ToSwarm::GenerateEvent(GateEvent::RequestAddrs(peer))
                }
                Action::FindCapable { capabilities } => {
                    ToSwarm::GenerateEvent(GateEvent::FindCapable(capabilities))
                }
                Action::Keep { peer, connection } => ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(connection),
                    event: true,
                },
            };
            self.queue.push_back(item);
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for Gatekeeper {
    type ConnectionHandler = KeepAliveHandler;
    type ToSwarm = GateEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.manager
            .check_pending_inbound(ip_of(remote_addr))
            .map_err(ConnectionDenied::new)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer {
            self.manager
                .check_dial(peer, addresses)
                .map_err(ConnectionDenied::new)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let actions = self
            .manager
            .check_established_inbound(peer, ip_of(remote_addr))
            .map_err(ConnectionDenied::new)?;
        self.apply(actions);
        // Inbound peers hold slots; the manager evicts them when it must.
        Ok(KeepAliveHandler { keep: true })
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.manager
            .check_established_outbound(peer, ip_of(addr))
            .map_err(ConnectionDenied::new)?;
        Ok(KeepAliveHandler {
            keep: self.manager.wants(&peer),
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                let (direction, remote) = if endpoint.is_dialer() {
                    (Direction::Outbound, endpoint.get_remote_address())
                } else {
                    (Direction::Inbound, endpoint.get_remote_address())
                };
                let actions = self.manager.on_established(
                    connection_id,
                    peer_id,
                    direction,
                    remote,
                    Instant::now(),
                    UnixTime::now(),
                );
                self.apply(actions);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.manager.on_closed(connection_id, Instant::now());
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) => {
                if let DialError::DialPeerConditionFalse(_) = error {
                    // libp2p did not dial: the peer was already connected or being dialled.
                    self.manager.on_dial_cancelled(peer);
                    return;
                }
                self.metrics.dial_failures.inc();
                let failed: Vec<Multiaddr> = match error {
                    DialError::Transport(errors) => errors.iter().map(|(a, _)| a.clone()).collect(),
                    _ => Vec::new(),
                };
                self.manager.on_dial_failure(peer, &failed, Instant::now());
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        // The handler emits no events (its event type is uninhabited).
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.queue.pop_front() {
            Some(item) => Poll::Ready(item),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Everything a PlayerGold node runs on each connection. Field order matters (see the module
/// documentation): every behaviour that may refuse a connection comes before every one that
/// does not.
#[derive(NetworkBehaviour)]
pub(crate) struct NodeBehaviour {
    /// Pending, per-peer and total connection limits.
    pub(crate) limits: connection_limits::Behaviour,
    /// Refuses new connections when the process uses too much memory.
    pub(crate) memory: memory_connection_limits::Behaviour,
    /// The connection manager; the last behaviour that may refuse a connection.
    pub(crate) gate: Gatekeeper,
    /// Heartbeats.
    pub(crate) ping: ping::Behaviour,
    /// Learns peers' listen addresses and network.
    pub(crate) identify: identify::Behaviour,
    /// Peer exchange.
    pub(crate) addrs: request_response::Behaviour<AddrCodec>,
    /// Raw streams for the protocols built above this crate (relay, sync), opened and accepted
    /// through [`crate::NetworkHandle::streams`].
    pub(crate) streams: libp2p_stream::Behaviour,
    /// The Kademlia DHT (`NetworkConfig::dht`), with manual routing-table inserts through the
    /// diversity filter (see [`crate::discovery`]).
    pub(crate) kad: Toggle<kad::Behaviour<MemoryStore>>,
    /// mDNS discovery on the local network (`NetworkConfig::mdns`).
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}
