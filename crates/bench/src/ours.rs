//! Our system: per node a chain (redb on tmpfs), a `playergold-net` network with the overlay's
//! link delays, and the relay service (`playergold-services`) with the default
//! [`PropagationConfig`] (or the bench's `--tx-fanout`).
//!
//! The overlay is fixed: nodes dial nobody by themselves (`min_peers = 0`, no bootstrap, no
//! persistent peers) and the bench dials each overlay link from its dialler with
//! [`NetworkHandle::connect`]. Arrivals come from each node's relay events (`NewTransaction`,
//! `NewBlock`); a transaction also counts as arrived at a node when a block carrying it is
//! imported there (it then has the transaction, and its mempool rightly refuses a late copy).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair as NodeKey;
use libp2p::metrics::Registry;
use libp2p::multiaddr::Protocol;
use parking_lot::Mutex;
use playergold_chain::{Blockchain, ChainBackend};
use playergold_net::{MemoryStore, Multiaddr, NetworkConfig, NetworkHandle, NetworkName};
use playergold_primitives::{Block, BlockHash, Genesis, Keypair, TimestampMs, Transaction, TxId};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::PropagationConfig;
use playergold_services::relay::MessageKind;
use playergold_services::{RelayHandle, RelayService, RelayServiceEvent, RelayServiceMetrics};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::chains::{BENCH_NETWORK, BenchChains, SLOT_MS};
use crate::links::{link_delay, tcp_listen_addr};
use crate::overlay::Overlay;
use crate::prom;
use crate::recorder::{Recorder, imported_key};
use crate::workload::derived_key;

/// Message kinds counted as transaction traffic: pushes, announcements and their requests, by
/// short id and by full id (blocks are pushed compact to every peer and never announced, so
/// `Announce`, `Request` and `NotFound` carry transaction ids; a block fetched after a failed
/// rebuild would be the exception, and the report shows how often that happened).
pub const TX_KINDS: [MessageKind; 7] = [
    MessageKind::Transactions,
    MessageKind::AnnounceTxs,
    MessageKind::RequestTxs,
    MessageKind::TxsNotFound,
    MessageKind::Announce,
    MessageKind::Request,
    MessageKind::NotFound,
];

/// Message kinds counted as block traffic.
pub const BLOCK_KINDS: [MessageKind; 4] = [
    MessageKind::CompactBlock,
    MessageKind::BlockTxnsRequest,
    MessageKind::BlockTxns,
    MessageKind::Block,
];

/// Errors of our side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OursError {
    /// The genesis or a name is invalid.
    #[error("invalid bench genesis: {0}")]
    Genesis(String),
    /// A chain database could not be opened.
    #[error("cannot open node {node}'s chain: {reason}")]
    Chain {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A network failed to start or dial.
    #[error("node {node}'s network: {reason}")]
    Network {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// A relay service failed.
    #[error("node {node}'s relay: {reason}")]
    Relay {
        /// The node.
        node: usize,
        /// Why.
        reason: String,
    },
    /// The relay did not come up on every overlay link in time.
    #[error("relay streams not up on every link after {0:?}: {1}")]
    NotReady(Duration, String),
}

/// Counters read from every node, summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OursBytes {
    /// Relay frames sent, bytes with framing, transaction kinds ([`TX_KINDS`]).
    pub tx: u64,
    /// Relay frames sent, block kinds ([`BLOCK_KINDS`]).
    pub block: u64,
    /// Relay frames sent, every kind.
    pub relay_total: u64,
    /// Relay frame bytes sent per message kind, in [`MessageKind::ALL`] order.
    pub per_kind: [u64; MessageKind::ALL.len()],
    /// Relay frames sent per message kind, in [`MessageKind::ALL`] order.
    pub frames_per_kind: [u64; MessageKind::ALL.len()],
    /// Every byte the networks wrote to streams (relay plus ping, identify, peer exchange and
    /// protocol negotiation).
    pub stream: u64,
    /// Sum of the engines' counters.
    pub compact_rebuilt: u64,
    /// Compact blocks that needed missing transactions fetched.
    pub compact_partial: u64,
    /// Compact blocks that fell back to a full block.
    pub compact_fallback: u64,
    /// Requests retried from another announcer.
    pub retries: u64,
    /// Peers dropped as slow.
    pub slow_peers: u64,
    /// Announcements that crossed on a link (counted at both ends).
    pub announcements_crossed: u64,
    /// Announcements held back and then dropped because the peer told us first.
    pub announcements_yielded: u64,
}

impl OursBytes {
    /// The difference `self − earlier`.
    pub fn since(&self, earlier: &OursBytes) -> OursBytes {
        OursBytes {
            tx: self.tx.saturating_sub(earlier.tx),
            block: self.block.saturating_sub(earlier.block),
            relay_total: self.relay_total.saturating_sub(earlier.relay_total),
            per_kind: std::array::from_fn(|i| self.per_kind[i].saturating_sub(earlier.per_kind[i])),
            frames_per_kind: std::array::from_fn(|i| {
                self.frames_per_kind[i].saturating_sub(earlier.frames_per_kind[i])
            }),
            stream: self.stream.saturating_sub(earlier.stream),
            compact_rebuilt: self.compact_rebuilt.saturating_sub(earlier.compact_rebuilt),
            compact_partial: self.compact_partial.saturating_sub(earlier.compact_partial),
            compact_fallback: self
                .compact_fallback
                .saturating_sub(earlier.compact_fallback),
            retries: self.retries.saturating_sub(earlier.retries),
            slow_peers: self.slow_peers.saturating_sub(earlier.slow_peers),
            announcements_crossed: self
                .announcements_crossed
                .saturating_sub(earlier.announcements_crossed),
            announcements_yielded: self
                .announcements_yielded
                .saturating_sub(earlier.announcements_yielded),
        }
    }

    fn add(&mut self, m: &RelayServiceMetrics, stream: u64) {
        let sum = |kinds: &[MessageKind]| kinds.iter().map(|k| m.sent.get(*k).bytes).sum::<u64>();
        self.tx += sum(&TX_KINDS);
        self.block += sum(&BLOCK_KINDS);
        self.relay_total += m.sent.total().bytes;
        for (i, kind) in MessageKind::ALL.into_iter().enumerate() {
            let sent = m.sent.get(kind);
            self.per_kind[i] += sent.bytes;
            self.frames_per_kind[i] += sent.messages;
        }
        self.stream += stream;
        self.compact_rebuilt += m.engine.compact_rebuilt;
        self.compact_partial += m.engine.compact_partial;
        self.compact_fallback += m.engine.compact_fallback;
        self.retries += m.engine.retries;
        self.slow_peers += m.engine.slow_peers;
        self.announcements_crossed += m.engine.announcements_crossed;
        self.announcements_yielded += m.engine.announcements_yielded;
    }
}

/// Diagnostics of the event subscriptions, summed over nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Transaction arrivals first learnt from an imported block.
    pub tx_via_block: u64,
    /// Events lost because a subscriber fell behind (should be 0).
    pub lagged: u64,
}

#[derive(Debug)]
struct Node {
    net: NetworkHandle,
    net_task: JoinHandle<()>,
    relay: RelayHandle,
    relay_task: JoinHandle<()>,
    chain: Arc<Blockchain>,
    registry: Registry,
    dial_addr: Multiaddr,
    listener: JoinHandle<()>,
}

/// Which transactions each block carries, for "arrived by block" accounting.
type BlockTxs = Arc<Mutex<HashMap<BlockHash, Vec<TxId>>>>;

/// Our network of the bench.
#[derive(Debug)]
pub struct OursNet {
    nodes: Vec<Node>,
    validators: Vec<Keypair>,
    block_txs: BlockTxs,
    stats: Arc<Mutex<EventStats>>,
    /// Every node's chain database; removed on drop.
    chains: BenchChains,
}

impl OursNet {
    /// Starts one node per overlay node (relay settings `relay_config`), all validators of a
    /// fresh devnet genesis, submits `backlog` at every node while they are still unconnected
    /// (so every mempool holds it and no relay traffic results), then dials the overlay. Returns
    /// once the relay runs both ways on every link.
    pub async fn start(
        overlay: Arc<Overlay>,
        recorder: Recorder,
        seed: u64,
        backlog: &[Transaction],
        ready_timeout: Duration,
        relay_config: &PropagationConfig,
        block_min_tx_age: Duration,
    ) -> Result<Self, OursError> {
        let n = overlay.len();
        let validators: Vec<Keypair> = (0..n).map(|i| derived_key(seed, "validator", i)).collect();
        let chains = BenchChains::new(&validators, block_min_tx_age).map_err(OursError::Genesis)?;
        let name =
            NetworkName::new(BENCH_NETWORK).map_err(|e| OursError::Genesis(e.to_string()))?;
        let block_txs: BlockTxs = Arc::default();
        let stats: Arc<Mutex<EventStats>> = Arc::default();

        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let chain = chains
                .open(i)
                .map_err(|reason| OursError::Chain { node: i, reason })?;
            let mut config = NetworkConfig::new(name.clone());
            config.listen_addrs = vec![tcp_listen_addr(i)];
            // A fixed overlay: nothing dials by itself.
            config.min_peers = 0;
            config.bootstrap = Vec::new();
            config.persistent_peers = Vec::new();
            config.mdns = false;
            config.dht = false;
            config.ai_peer_slots = 0;
            // Room for every overlay link in either direction, whatever the degree.
            let cap = overlay.degree(i) * 2 + 16;
            config.max_peers = cap;
            config.outbound_reserve = cap / 2;
            config.max_inbound_per_ip = cap;
            config.max_pending_incoming = cap as u32;
            config.max_pending_outgoing = cap as u32;
            config.allow_local_addresses = true;
            config.rng_seed = Some(seed.wrapping_add(i as u64));
            config.link_delay = Some(link_delay(overlay.clone(), i));
            let net_err = |reason: String| OursError::Network { node: i, reason };
            let mut registry = Registry::default();
            let (net, net_task, _) = playergold_net::start_with_metrics(
                config,
                NodeKey::generate_ed25519(),
                Box::new(MemoryStore::new()),
                &mut registry,
            )
            .await
            .map_err(|e| net_err(e.to_string()))?;
            let listen = net
                .listen_addrs()
                .await
                .map_err(|e| net_err(e.to_string()))?;
            let dial_addr = listen
                .into_iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
                .ok_or_else(|| net_err("no TCP listen address".into()))?
                .with(Protocol::P2p(net.local_peer_id()));
            let (relay, relay_task) = RelayService::start(
                net.clone(),
                chain.clone(),
                relay_config.clone(),
                Capabilities::NONE,
            )
            .map_err(|e| OursError::Relay {
                node: i,
                reason: e.to_string(),
            })?;
            let listener = tokio::spawn(listen_events(
                i,
                relay.subscribe(),
                recorder.clone(),
                block_txs.clone(),
                stats.clone(),
            ));
            nodes.push(Node {
                net,
                net_task,
                relay,
                relay_task,
                chain,
                registry,
                dial_addr,
                listener,
            });
        }

        let preload = nodes.iter().enumerate().map(|(i, node)| async move {
            for tx in backlog {
                node.relay
                    .submit_transaction(tx.clone())
                    .await
                    .map_err(|e| OursError::Relay {
                        node: i,
                        reason: format!("backlog: {e}"),
                    })?;
            }
            Ok::<(), OursError>(())
        });
        futures::future::try_join_all(preload).await?;

        let dials = overlay.links().iter().map(|l| {
            let net = nodes[l.dialer].net.clone();
            let addr = nodes[l.listener].dial_addr.clone();
            let dialer = l.dialer;
            async move {
                net.connect(addr).await.map_err(|e| OursError::Network {
                    node: dialer,
                    reason: e.to_string(),
                })
            }
        });
        futures::future::try_join_all(dials).await?;

        let net = Self {
            nodes,
            validators,
            block_txs,
            stats,
            chains,
        };
        net.wait_ready(&overlay, ready_timeout).await?;
        Ok(net)
    }

    /// Waits until every node's relay has streams open both ways with each overlay neighbour.
    async fn wait_ready(&self, overlay: &Overlay, timeout: Duration) -> Result<(), OursError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut short = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                let peers = node.relay.peers().await.map_err(|e| OursError::Relay {
                    node: i,
                    reason: e.to_string(),
                })?;
                let up = peers
                    .iter()
                    .filter(|p| p.inbound_open && p.outbound_open)
                    .count();
                if up < overlay.degree(i) {
                    short.push((i, up, overlay.degree(i)));
                }
            }
            if short.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(OursError::NotReady(
                    timeout,
                    format!("(node, ready, links): {short:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits a transaction at node `node`.
    pub async fn submit_transaction(&self, node: usize, tx: Transaction) -> Result<(), OursError> {
        let n = self.node(node)?;
        n.relay
            .submit_transaction(tx)
            .await
            .map(drop)
            .map_err(|e| OursError::Relay {
                node,
                reason: e.to_string(),
            })
    }

    /// The chains' genesis (the baseline's nodes import our blocks on it).
    pub fn genesis(&self) -> &Genesis {
        self.chains.genesis()
    }

    /// The validator (and node) of the slot `now` falls in.
    pub fn producer_at(&self, now: TimestampMs) -> usize {
        ((now.0 / SLOT_MS) % self.validators.len().max(1) as u64) as usize
    }

    /// The best block of node `node`.
    pub fn tip(&self, node: usize) -> Option<BlockHash> {
        self.nodes.get(node).map(|n| n.chain.tip().hash)
    }

    /// Builds a block at `node` (which must hold the slot of `now`) on its tip from its
    /// mempool, at most `max_txs` transactions.
    pub fn build_block(&self, node: usize, now: TimestampMs, max_txs: usize) -> Option<Block> {
        let n = self.nodes.get(node)?;
        let key = self.validators.get(node)?;
        let block = n.chain.build_block(key, now, max_txs);
        self.block_txs.lock().insert(block.hash(), block.tx_ids());
        Some(block)
    }

    /// Imports and propagates a block produced at `node`.
    pub async fn propagate_block(&self, node: usize, block: Block) -> Result<(), OursError> {
        let n = self.node(node)?;
        n.relay
            .propagate_block(block)
            .await
            .map(drop)
            .map_err(|e| OursError::Relay {
                node,
                reason: e.to_string(),
            })
    }

    /// Counters summed over nodes.
    pub async fn bytes(&self) -> Result<OursBytes, OursError> {
        let mut out = OursBytes::default();
        for (i, node) in self.nodes.iter().enumerate() {
            let m = node.relay.metrics().await.map_err(|e| OursError::Relay {
                node: i,
                reason: e.to_string(),
            })?;
            let stream = prom::sum(
                &node.registry,
                "libp2p_bandwidth_bytes_total",
                &[("direction", "Outbound")],
            ) as u64;
            out.add(&m, stream);
        }
        Ok(out)
    }

    /// Nodes whose connected peers differ from their overlay links (something dialled by
    /// itself, or a link dropped): 0 for a fixed overlay.
    pub async fn off_overlay_nodes(&self, overlay: &Overlay) -> usize {
        let mut off = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            let peers = node.net.peers().await.map(|p| p.len()).unwrap_or(0);
            if peers != overlay.degree(i) {
                off += 1;
            }
        }
        off
    }

    /// Subscription diagnostics.
    pub fn event_stats(&self) -> EventStats {
        *self.stats.lock()
    }

    /// Stops every relay and network, in parallel.
    pub async fn stop(self) {
        let stops = self.nodes.into_iter().map(|node| async move {
            let _ = node.relay.shutdown().await;
            let _ = node.relay_task.await;
            let _ = node.net.shutdown().await;
            let _ = node.net_task.await;
            node.listener.abort();
        });
        futures::future::join_all(stops).await;
    }

    fn node(&self, node: usize) -> Result<&Node, OursError> {
        self.nodes.get(node).ok_or(OursError::Relay {
            node,
            reason: "no such node".into(),
        })
    }
}

/// Reports one node's relay events to the recorder until the relay stops.
async fn listen_events(
    node: usize,
    mut events: tokio::sync::broadcast::Receiver<RelayServiceEvent>,
    recorder: Recorder,
    block_txs: BlockTxs,
    stats: Arc<Mutex<EventStats>>,
) {
    loop {
        match events.recv().await {
            // Stamped by the relay when it accepted the item, as the gossipsub side records
            // arrivals in the node's own task: this task reads the events later.
            Ok(RelayServiceEvent::NewTransaction { id, at, .. }) => {
                recorder.arrived_at(node, &id.0, at);
            }
            Ok(RelayServiceEvent::BlockReceived { hash, at, .. }) => {
                recorder.arrived_at(node, &hash.0, at);
            }
            Ok(RelayServiceEvent::NewBlock { hash, at, .. }) => {
                // Received, if no earlier event said so (a block the relay did not rebuild).
                recorder.arrived_at(node, &hash.0, at);
                recorder.arrived_at(node, &imported_key(&hash.0), at);
                let txs = block_txs.lock().get(&hash).cloned().unwrap_or_default();
                let mut via_block = 0;
                for id in txs {
                    if recorder.arrived_at(node, &id.0, at) {
                        via_block += 1;
                    }
                }
                stats.lock().tx_via_block += via_block;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => stats.lock().lagged += n,
            Err(RecvError::Closed) => break,
        }
    }
}
