//! An in-process testnet: real nodes on 127.0.0.0/8 with real TLS, for this crate's and other
//! crates' tests (feature `test-utils`).
//!
//! Every node gets its own loopback address `127.<n>.0.1` (all of 127.0.0.0/8 is loopback on
//! Linux) and listens on QUIC there. QUIC dials leave from the listening socket, so node `n`
//! really connects from `127.<n>.0.1`, and IP-group (/16) logic sees distinct groups. Waiting
//! helpers are driven by [`NetworkEvent`]s with a deadline, never by fixed sleeps.
//!
//! Test configs run the DHT as a server (every test node is reachable) and leave mDNS off:
//! mDNS multicasts on every interface of the host, so only tests that create their own network
//! namespaces turn it on.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::future::select_all;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::addrbook::{BackoffConfig, MemoryStore};
use crate::config::{DhtMode, NetworkConfig};
use crate::policy::PeerInfo;
use crate::protocol::NetworkName;
use crate::service::{NetworkError, NetworkEvent, NetworkHandle, start};

/// Network name used by test nodes.
pub const TEST_NETWORK: &str = "localtest";

/// The loopback address of test node `n` (`127.<n+1>.0.1`: one /16 group per node, n < 254).
pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, n.saturating_add(1), 0, 1)
}

/// A QUIC listen address on `ip` with an OS-chosen port.
pub fn quic_addr(ip: Ipv4Addr) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(ip))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

/// A TCP listen address on `ip` with an OS-chosen port.
pub fn tcp_addr(ip: Ipv4Addr) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4(ip))
        .with(Protocol::Tcp(0))
}

/// A config for tests: QUIC on `ip`, fast heartbeats, short backoff, local addresses allowed,
/// a fixed jitter seed, mDNS off and the DHT on in server mode.
pub fn test_config(ip: Ipv4Addr) -> NetworkConfig {
    let mut cfg = NetworkConfig::new(
        // TEST_NETWORK is a constant made of [a-z], so it is always a valid name.
        NetworkName::new(TEST_NETWORK).unwrap_or_else(|_| unreachable!("valid name")),
    );
    cfg.listen_addrs = vec![quic_addr(ip)];
    cfg.allow_local_addresses = true;
    cfg.heartbeat_interval = Duration::from_secs(1);
    cfg.heartbeat_timeout = Duration::from_secs(3);
    cfg.backoff = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(2),
        jitter_percent: 25,
    };
    cfg.addr_request_interval = Duration::from_secs(1);
    cfg.rng_seed = Some(u64::from(u32::from(ip)));
    cfg.mdns = false;
    cfg.dht = true;
    cfg.dht_mode = DhtMode::Server;
    cfg
}

/// A running test node.
#[derive(Debug)]
pub struct TestNode {
    /// Its handle.
    pub handle: NetworkHandle,
    /// Its key (reuse it to restart the node with the same identity).
    pub keypair: Keypair,
    /// Its address book store (reuse it to restart the node).
    pub store: MemoryStore,
    /// Its configuration.
    pub config: NetworkConfig,
    /// The addresses it listens on.
    pub listen_addrs: Vec<Multiaddr>,
    task: JoinHandle<()>,
}

impl TestNode {
    /// Starts a node.
    pub async fn spawn(
        config: NetworkConfig,
        keypair: Keypair,
        store: MemoryStore,
    ) -> Result<Self, NetworkError> {
        let (handle, task) =
            start(config.clone(), keypair.clone(), Box::new(store.clone())).await?;
        let listen_addrs = handle.listen_addrs().await?;
        Ok(Self {
            handle,
            keypair,
            store,
            config,
            listen_addrs,
            task,
        })
    }

    /// Starts a fresh node with a new key and an empty store.
    pub async fn spawn_fresh(config: NetworkConfig) -> Result<Self, NetworkError> {
        Self::spawn(config, Keypair::generate_ed25519(), MemoryStore::new()).await
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.local_peer_id()
    }

    /// Its first listen address with `/p2p/<id>` appended.
    pub fn dial_addr(&self) -> Multiaddr {
        self.listen_addrs
            .first()
            .cloned()
            .unwrap_or_else(Multiaddr::empty)
            .with(Protocol::P2p(self.peer_id()))
    }

    /// Shuts the node down and waits for its task.
    pub async fn stop(self) {
        let _ = self.handle.shutdown().await;
        let _ = self.task.await;
    }

    /// Waits until `pred` holds for this node's peers, re-checking on every event.
    pub async fn wait_peers(
        &self,
        timeout: Duration,
        pred: impl Fn(&[PeerInfo]) -> bool,
    ) -> Result<Vec<PeerInfo>, String> {
        wait_all(std::slice::from_ref(self), timeout, |_, peers| pred(peers))
            .await
            .map(|mut all| all.pop().unwrap_or_default())
    }
}

/// Re-check period of [`wait_all`] for conditions no event announces (ping latencies).
const RECHECK: Duration = Duration::from_millis(100);

/// Waits until `pred(index, peers)` holds for every node, re-checking whenever any node emits an
/// event (and every 100 ms for conditions no event announces, such as ping latencies). Returns every node's peers, or a description of the nodes that did not get there.
pub async fn wait_all(
    nodes: &[TestNode],
    timeout: Duration,
    pred: impl Fn(usize, &[PeerInfo]) -> bool,
) -> Result<Vec<Vec<PeerInfo>>, String> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + timeout;
    let mut receivers: Vec<broadcast::Receiver<NetworkEvent>> =
        nodes.iter().map(|n| n.handle.subscribe()).collect();
    loop {
        let mut all = Vec::with_capacity(nodes.len());
        let mut failing = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let peers = node
                .handle
                .peers()
                .await
                .map_err(|e| format!("node {i}: {e}"))?;
            if !pred(i, &peers) {
                let out = peers
                    .iter()
                    .filter(|p| p.direction == crate::policy::Direction::Outbound)
                    .count();
                failing.push((i, peers.len(), out));
            }
            all.push(peers);
        }
        if failing.is_empty() {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?}; failing (node, peers, outbound): {failing:?}"
            ));
        }
        let next = select_all(receivers.iter_mut().map(|r| Box::pin(r.recv())));
        let wake = deadline.min(Instant::now() + RECHECK);
        if tokio::time::timeout_at(wake, next).await.is_err() && Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?}; failing (node, peers, outbound): {failing:?}"
            ));
        }
    }
}
