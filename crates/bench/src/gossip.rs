//! The baseline: rust-libp2p gossipsub with its default configuration, on the same overlay, the
//! same TCP + TLS 1.3 + yamux stack and the same emulated delays as our network
//! ([`playergold_net::latency::tcp_transport`]).
//!
//! One topic carries transactions, one carries full blocks; payloads are the items' canonical
//! encodings, so their sizes equal ours. Each node is one task owning its swarm behind a bounded
//! command channel. Bytes are counted twice: at the streams (libp2p's bandwidth transport, every
//! gossipsub byte: messages and control) and per topic (gossipsub's own message byte counters).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::metrics::BandwidthTransport;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::chains::{NodeWork, Work};
use crate::links::{link_delay, tcp_listen_addr};
use crate::overlay::Overlay;
use crate::prom;
use crate::recorder::{ItemKey, Recorder};

/// Topic of transactions.
pub const TX_TOPIC: &str = "playergold-bench/tx";
/// Topic of blocks.
pub const BLOCK_TOPIC: &str = "playergold-bench/block";

/// Commands waiting for one node's task. The driver sends at most one publish at a time per
/// node and awaits its reply, so a handful is plenty.
const COMMAND_CHANNEL_CAPACITY: usize = 16;

/// Longest wait for a node's listener to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for one dial of the overlay.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle timeout of connections: gossipsub keeps its connections alive by itself; this only
/// stops the swarm from closing a link in the pause before the first subscription.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Which topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// [`TX_TOPIC`].
    Tx,
    /// [`BLOCK_TOPIC`].
    Block,
}

impl Topic {
    fn ident(self) -> IdentTopic {
        IdentTopic::new(match self {
            Topic::Tx => TX_TOPIC,
            Topic::Block => BLOCK_TOPIC,
        })
    }
}

/// Errors of the gossipsub side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GossipError {
    /// Building the transport or behaviour failed.
    #[error("cannot build a gossipsub node: {0}")]
    Build(String),
    /// A listener did not come up.
    #[error("node {node} cannot listen: {reason}")]
    Listen {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A dial of the overlay failed.
    #[error("node {from} cannot dial node {to}: {reason}")]
    Dial {
        /// Dialler.
        from: usize,
        /// Dialled.
        to: usize,
        /// Why.
        reason: String,
    },
    /// Publishing failed.
    #[error("node {node} cannot publish: {reason}")]
    Publish {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A node task stopped.
    #[error("a gossipsub node stopped")]
    Stopped,
}

#[derive(Debug)]
enum Command {
    Dial(Multiaddr, PeerId, oneshot::Sender<Result<(), String>>),
    Publish(Topic, Vec<u8>, oneshot::Sender<Result<(), String>>),
    Mesh(oneshot::Sender<MeshStatus>),
}

/// One node's view of its topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStatus {
    /// Connected peers.
    pub peers: usize,
    /// Peers subscribed to both topics.
    pub subscribed: usize,
    /// Mesh peers of the transaction topic.
    pub tx_mesh: usize,
    /// Mesh peers of the block topic.
    pub block_mesh: usize,
}

/// Bytes a gossipsub network sent, all nodes together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GossipBytes {
    /// Every byte written to streams (messages, control, protocol negotiation).
    pub stream: u64,
    /// Bytes of transaction messages sent (gossipsub's per-topic counter).
    pub tx_messages: u64,
    /// Bytes of block messages sent.
    pub block_messages: u64,
}

impl GossipBytes {
    /// The difference `self − earlier`.
    pub fn since(&self, earlier: &GossipBytes) -> GossipBytes {
        GossipBytes {
            stream: self.stream.saturating_sub(earlier.stream),
            tx_messages: self.tx_messages.saturating_sub(earlier.tx_messages),
            block_messages: self.block_messages.saturating_sub(earlier.block_messages),
        }
    }
}

/// A running gossipsub node.
#[derive(Debug)]
struct Node {
    peer_id: PeerId,
    addr: Multiaddr,
    commands: mpsc::Sender<Command>,
    registry: Registry,
    task: JoinHandle<()>,
}

/// The gossipsub network of the bench.
#[derive(Debug)]
pub struct GossipNet {
    nodes: Vec<Node>,
}

impl GossipNet {
    /// Starts one gossipsub node per overlay node (each listening on its own loopback IP and
    /// subscribed to both topics) and dials every overlay link from its dialler. Arrivals are
    /// reported to `recorder` under the blake3 hash of the payload, and each delivered item is
    /// then handed to the node's work (`work[i]`, when given: its chain's mempool or import).
    pub async fn start(
        overlay: Arc<Overlay>,
        recorder: Recorder,
        work: Vec<NodeWork>,
    ) -> Result<Self, GossipError> {
        let mut nodes = Vec::with_capacity(overlay.len());
        for i in 0..overlay.len() {
            let work = work.get(i).cloned();
            nodes.push(spawn_node(i, overlay.clone(), recorder.clone(), work).await?);
        }
        let dials = overlay.links().iter().map(|l| {
            let (from, to) = (&nodes[l.dialer], &nodes[l.listener]);
            let (dialer, listener) = (l.dialer, l.listener);
            let addr = to.addr.clone();
            let peer = to.peer_id;
            let commands = from.commands.clone();
            async move {
                let (reply, rx) = oneshot::channel();
                let fail = |reason: String| GossipError::Dial {
                    from: dialer,
                    to: listener,
                    reason,
                };
                commands
                    .send(Command::Dial(addr, peer, reply))
                    .await
                    .map_err(|_| GossipError::Stopped)?;
                match tokio::time::timeout(DIAL_TIMEOUT, rx).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(reason))) => Err(fail(reason)),
                    Ok(Err(_)) => Err(GossipError::Stopped),
                    Err(_) => Err(fail("timed out".into())),
                }
            }
        });
        futures::future::try_join_all(dials).await?;
        Ok(Self { nodes })
    }

    /// Each node's mesh status.
    pub async fn mesh(&self) -> Result<Vec<MeshStatus>, GossipError> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let (reply, rx) = oneshot::channel();
            node.commands
                .send(Command::Mesh(reply))
                .await
                .map_err(|_| GossipError::Stopped)?;
            out.push(rx.await.map_err(|_| GossipError::Stopped)?);
        }
        Ok(out)
    }

    /// Publishes `data` on `topic` from node `node`.
    pub async fn publish(
        &self,
        node: usize,
        topic: Topic,
        data: Vec<u8>,
    ) -> Result<(), GossipError> {
        let n = self.nodes.get(node).ok_or(GossipError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        n.commands
            .send(Command::Publish(topic, data, reply))
            .await
            .map_err(|_| GossipError::Stopped)?;
        rx.await
            .map_err(|_| GossipError::Stopped)?
            .map_err(|reason| GossipError::Publish { node, reason })
    }

    /// Bytes sent so far, all nodes together.
    pub fn bytes(&self) -> GossipBytes {
        let mut out = GossipBytes::default();
        let tx_topic = Topic::Tx.ident().hash().to_string();
        let block_topic = Topic::Block.ident().hash().to_string();
        for node in &self.nodes {
            out.stream += prom::sum(
                &node.registry,
                "libp2p_bandwidth_bytes_total",
                &[("direction", "Outbound")],
            ) as u64;
            let topic_bytes = |t: &str| {
                prom::sum(
                    &node.registry,
                    "topic_msg_sent_bytes_total",
                    &[("topic_hash", t)],
                ) as u64
            };
            out.tx_messages += topic_bytes(&tx_topic);
            out.block_messages += topic_bytes(&block_topic);
        }
        out
    }

    /// Stops every node.
    pub async fn stop(self) {
        for node in self.nodes {
            drop(node.commands);
            let _ = node.task.await;
        }
    }
}

/// The swarm's transport: our TCP + TLS + yamux stack with the overlay's delays, counted.
fn transport(
    keypair: &Keypair,
    overlay: Arc<Overlay>,
    me: usize,
    registry: &mut Registry,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, GossipError> {
    let tcp = libp2p::tcp::Config::default().nodelay(true);
    let inner = playergold_net::latency::tcp_transport(keypair, tcp, Some(link_delay(overlay, me)))
        .map_err(|e| GossipError::Build(e.to_string()))?;
    Ok(BandwidthTransport::new(inner, registry)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

async fn spawn_node(
    index: usize,
    overlay: Arc<Overlay>,
    recorder: Recorder,
    work: Option<NodeWork>,
) -> Result<Node, GossipError> {
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let mut registry = Registry::default();
    let transport = transport(&keypair, overlay, index, &mut registry)?;
    let mut behaviour = gossipsub::Behaviour::new(
        MessageAuthenticity::Signed(keypair.clone()),
        gossipsub::Config::default(),
    )
    .map_err(|e| GossipError::Build(e.to_string()))?
    .with_metrics(&mut registry, gossipsub::MetricsConfig::default());
    for topic in [Topic::Tx, Topic::Block] {
        behaviour
            .subscribe(&topic.ident())
            .map_err(|e| GossipError::Build(e.to_string()))?;
    }
    let config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT);
    let mut swarm = Swarm::new(transport, behaviour, peer_id, config);
    let listen_err = |reason: String| GossipError::Listen {
        node: index,
        reason,
    };
    swarm
        .listen_on(tcp_listen_addr(index))
        .map_err(|e| listen_err(e.to_string()))?;
    let addr = tokio::time::timeout(LISTEN_TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                SwarmEvent::ListenerError { error, .. } => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| listen_err("timed out".into()))?
    .map_err(listen_err)?;
    let (commands, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let task = tokio::spawn(run(swarm, rx, index, recorder, work));
    Ok(Node {
        peer_id,
        addr: addr.with(Protocol::P2p(peer_id)),
        commands,
        registry,
        task,
    })
}

/// The node task: commands in, swarm events out to the recorder, delivered items on to the
/// node's work.
async fn run(
    mut swarm: Swarm<gossipsub::Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    index: usize,
    recorder: Recorder,
    work: Option<NodeWork>,
) {
    let block_topic = Topic::Block.ident().hash();
    let mut dials: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => break,
                Some(Command::Dial(addr, peer, reply)) => {
                    if swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(()));
                    } else if let Err(e) = swarm.dial(addr) {
                        let _ = reply.send(Err(e.to_string()));
                    } else {
                        dials.entry(peer).or_default().push(reply);
                    }
                }
                Some(Command::Publish(topic, data, reply)) => {
                    // The origin keeps what it publishes, as our producer imports its block.
                    let kept = work.as_ref().map(|_| data.clone());
                    let result = swarm
                        .behaviour_mut()
                        .publish(topic.ident(), data)
                        .map(drop)
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                    if let (Some(work), Some(data)) = (&work, kept) {
                        work.give(match topic {
                            Topic::Block => Work::Block(data),
                            Topic::Tx => Work::Tx(data),
                        });
                    }
                }
                Some(Command::Mesh(reply)) => {
                    let b = swarm.behaviour();
                    let status = MeshStatus {
                        peers: swarm.connected_peers().count(),
                        subscribed: b.all_peers().filter(|(_, t)| t.len() >= 2).count(),
                        tx_mesh: b.mesh_peers(&Topic::Tx.ident().hash()).count(),
                        block_mesh: b.mesh_peers(&Topic::Block.ident().hash()).count(),
                    };
                    let _ = reply.send(status);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                    recorder.arrived(index, &payload_key(&message.data));
                    if let Some(work) = &work {
                        work.give(if message.topic == block_topic {
                            Work::Block(message.data)
                        } else {
                            Work::Tx(message.data)
                        });
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    for reply in dials.remove(&peer_id).unwrap_or_default() {
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                    for reply in dials.remove(&peer).unwrap_or_default() {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                _ => {}
            },
        }
    }
}

/// The recorder key of a gossipsub payload.
pub fn payload_key(data: &[u8]) -> ItemKey {
    *blake3::hash(data).as_bytes()
}
