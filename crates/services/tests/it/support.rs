//! A devnet of relay nodes on 127.0.0.0/8 with real TLS, and a raw-stream peer for hostile tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use libp2p_stream::{Control, IncomingStreams};
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_net::framing::{read_frame, write_frame};
use playergold_net::testnet::{TEST_NETWORK, TestNode, node_ip, test_config};
use playergold_net::{NetworkConfig, NetworkName};
use playergold_primitives::codec;
use playergold_primitives::{
    Address, Amount, Block, Genesis, Keypair, Nonce, TimestampMs, Transaction, UnsignedTransaction,
};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{PropagationConfig, RelayMessage};
use playergold_services::RelayHandle;
use playergold_services::relay::{
    MAX_FRAME_SIZE, RelayHello, RelayService, RelayServiceEvent, relay_protocol,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Slot length of the devnet genesis.
const SLOT_MS: u64 = 1_000;
/// Genesis time: far enough back that any current slot follows it.
const GENESIS_MS: u64 = 1_600_000_000_000;

/// A shared genesis whose validator keys the test holds, and one directory for every node's chain.
pub(crate) struct Devnet {
    pub(crate) validators: Vec<Keypair>,
    pub(crate) genesis: Genesis,
    dir: tempfile::TempDir,
}

impl Devnet {
    pub(crate) fn new() -> Devnet {
        let validators: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_secret(&[i; 32])).collect();
        let genesis = Genesis::devnet(
            TEST_NETWORK,
            validators.iter().map(Keypair::public).collect(),
            TimestampMs(GENESIS_MS),
        )
        .expect("valid genesis");
        Devnet {
            validators,
            genesis,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub(crate) fn open_chain(&self, name: &str) -> Arc<Blockchain> {
        Arc::new(
            Blockchain::open(
                &self.dir.path().join(name),
                self.genesis.clone(),
                Arc::new(ProofOfAuthority::from_genesis(&self.genesis)),
                ChainConfig::default(),
            )
            .expect("open chain"),
        )
    }

    /// A block on `chain`'s tip in the current slot, signed by that slot's validator, carrying up
    /// to `max_txs` of its mempool.
    pub(crate) fn produce(&self, chain: &Blockchain, max_txs: usize) -> Block {
        let now = TimestampMs::now();
        let slot = now.0 / SLOT_MS;
        let key = &self.validators[(slot % self.validators.len() as u64) as usize];
        chain.build_block(key, now, max_txs)
    }

    /// A block on `chain`'s tip carrying exactly `txs` (not necessarily in any mempool).
    pub(crate) fn block_with(&self, chain: &Blockchain, txs: Vec<Transaction>) -> Block {
        let now = TimestampMs::now();
        let slot = now.0 / SLOT_MS;
        let key = &self.validators[(slot % self.validators.len() as u64) as usize];
        let tip = chain.tip();
        Block::build(
            key,
            tip.hash,
            playergold_primitives::Height(tip.height.0 + 1),
            now,
            txs,
        )
    }
}

/// A signed transfer from sender `sender` with `nonce`.
pub(crate) fn tx(sender: u16, nonce: u64) -> Transaction {
    let mut seed = [7u8; 32];
    seed[..2].copy_from_slice(&sender.to_le_bytes());
    let key = Keypair::from_secret(&seed);
    UnsignedTransaction {
        from: key.public(),
        to: Address([3; 20]),
        amount: Amount(1),
        fee: Amount(1),
        nonce: Nonce(nonce),
        timestamp_ms: TimestampMs(GENESIS_MS),
    }
    .sign(&key)
}

/// A transaction whose signature does not verify.
pub(crate) fn forged_tx(sender: u16, nonce: u64) -> Transaction {
    let mut t = tx(sender, nonce);
    t.amount = Amount(1_000_000);
    t
}

/// A test network config where only the test dials: no outbound target, no DHT lookups, no
/// AI peer quota, so each test's topology is exactly the one it wires.
pub(crate) fn fixed_topology(index: u8, capabilities: Capabilities) -> NetworkConfig {
    let mut cfg = test_config(node_ip(index));
    cfg.min_peers = 0;
    cfg.dht = false;
    cfg.ai_peer_slots = 0;
    cfg.capabilities = capabilities;
    cfg
}

/// A relay node: network, chain and relay service, with an event subscription taken at start.
pub(crate) struct RelayNode {
    pub(crate) net: TestNode,
    pub(crate) chain: Arc<Blockchain>,
    pub(crate) relay: RelayHandle,
    events: broadcast::Receiver<RelayServiceEvent>,
    /// Every event received so far (waits consume the subscription; tests read this).
    log: Vec<RelayServiceEvent>,
    task: JoinHandle<()>,
}

impl RelayNode {
    /// Starts node `index` (address `127.<index+1>.0.1`); only the test dials (`min_peers` 0).
    pub(crate) async fn spawn(
        devnet: &Devnet,
        index: u8,
        config: PropagationConfig,
        capabilities: Capabilities,
    ) -> RelayNode {
        let net = TestNode::spawn_fresh(fixed_topology(index, capabilities))
            .await
            .expect("network starts");
        let chain = devnet.open_chain(&format!("node{index}"));
        let (relay, task) =
            RelayService::start(net.handle.clone(), chain.clone(), config, capabilities)
                .expect("relay starts");
        let events = relay.subscribe();
        RelayNode {
            net,
            chain,
            relay,
            events,
            log: Vec::new(),
            task,
        }
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// Dials `other`.
    pub(crate) async fn connect(&self, other: &RelayNode) {
        self.net
            .handle
            .connect(other.net.dial_addr())
            .await
            .expect("connect");
    }

    /// Waits until `check` holds, re-checking after each of this node's relay events.
    pub(crate) async fn wait_until<F, Fut>(&mut self, timeout: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            self.next_event(deadline, timeout, what).await;
        }
    }

    /// Waits for an event matching `pred` and returns it.
    pub(crate) async fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&RelayServiceEvent) -> bool,
    ) -> RelayServiceEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let event = self.next_event(deadline, timeout, what).await;
            if pred(&event) {
                return event;
            }
        }
    }

    /// The next event (also kept in the log), or a panic at the deadline.
    async fn next_event(
        &mut self,
        deadline: Instant,
        timeout: Duration,
        what: &str,
    ) -> RelayServiceEvent {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            Ok(Ok(event)) => {
                self.log.push(event.clone());
                event
            }
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                panic!("test subscriber lagged by {n} events while waiting for {what}")
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                panic!("relay stopped while waiting for {what}")
            }
        }
    }

    /// Every event so far, including those not waited on yet (clears the log).
    pub(crate) fn take_events(&mut self) -> Vec<RelayServiceEvent> {
        while let Ok(event) = self.events.try_recv() {
            self.log.push(event);
        }
        std::mem::take(&mut self.log)
    }

    /// Waits until this node has exactly `n` relay peers, all with streams open both ways.
    pub(crate) async fn wait_relay_peers(&mut self, n: usize, timeout: Duration) {
        let relay = self.relay.clone();
        self.wait_until(timeout, &format!("{n} relay peers"), || {
            let relay = relay.clone();
            async move {
                let peers = relay.peers().await.expect("relay runs");
                peers.len() == n && peers.iter().all(|p| p.outbound_open && p.inbound_open)
            }
        })
        .await
    }

    pub(crate) async fn stop(self) {
        let _ = self.relay.shutdown().await;
        let _ = self.task.await;
        self.net.stop().await;
    }
}

/// Waits until `check` holds, re-checking after every event on `events`; never sleeps blindly.
pub(crate) async fn wait_on<E: Clone, F, Fut>(
    events: &mut broadcast::Receiver<E>,
    timeout: Duration,
    what: &str,
    mut check: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                panic!("event source closed while waiting for {what}")
            }
        }
    }
}

/// Starts `n` relay nodes with the same settings, indexes from `first`.
pub(crate) async fn spawn_nodes(
    devnet: &Devnet,
    first: u8,
    n: u8,
    config: &PropagationConfig,
    capabilities: Capabilities,
) -> Vec<RelayNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(RelayNode::spawn(devnet, first + i, config.clone(), capabilities).await);
    }
    nodes
}

/// Connects `edges` and waits until every node's relay sees exactly its neighbours.
pub(crate) async fn wire(nodes: &mut [RelayNode], edges: &[(usize, usize)], timeout: Duration) {
    for (a, b) in edges {
        nodes[*a].connect(&nodes[*b]).await;
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let degree = edges.iter().filter(|(a, b)| *a == i || *b == i).count();
        node.wait_relay_peers(degree, timeout).await;
    }
}

/// A peer that speaks the relay protocol by hand, through the raw stream control: it can say and
/// withhold whatever a test needs.
pub(crate) struct RawPeer {
    pub(crate) net: TestNode,
    control: Control,
    incoming: IncomingStreams,
    hello: RelayHello,
}

impl RawPeer {
    pub(crate) async fn spawn(devnet: &Devnet, index: u8) -> RawPeer {
        let net = TestNode::spawn_fresh(fixed_topology(index, Capabilities::NONE))
            .await
            .expect("network starts");
        let name = NetworkName::new(TEST_NETWORK).expect("valid name");
        let mut control = net.handle.streams();
        let incoming = control
            .accept(relay_protocol(&name).expect("protocol"))
            .expect("accept relay");
        RawPeer {
            net,
            control,
            incoming,
            hello: RelayHello {
                genesis: devnet.genesis.hash(),
                capabilities: Capabilities::NONE,
                tx_salt: None,
            },
        }
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    /// Connects to `node`, opens our relay stream to it (hello sent) and accepts its stream to us
    /// (hello read). Returns (ours, theirs).
    pub(crate) async fn connect(&mut self, node: &RelayNode) -> (Stream, Stream) {
        let hello = self.hello;
        let (target, ours) = self.open(node, hello).await;
        let (from, theirs) = self.accept(Duration::from_secs(10)).await;
        assert_eq!(from, target);
        (ours, theirs)
    }

    /// Waits for the next relay stream a node opens to us and reads its hello (which must name
    /// our genesis). Returns the node and the stream.
    pub(crate) async fn accept(&mut self, timeout: Duration) -> (PeerId, Stream) {
        let (from, mut theirs) = tokio::time::timeout(timeout, self.incoming.next())
            .await
            .expect("the node opens its stream")
            .expect("incoming streams");
        let hello: RelayHello = codec::decode(
            &read_frame(&mut theirs, MAX_FRAME_SIZE)
                .await
                .expect("hello frame"),
        )
        .expect("hello decodes");
        assert_eq!(hello.genesis, self.hello.genesis);
        (from, theirs)
    }

    /// Connects to `node` and opens our relay stream to it with `hello`; returns the node's peer
    /// id and the stream.
    pub(crate) async fn open(&mut self, node: &RelayNode, hello: RelayHello) -> (PeerId, Stream) {
        let target = self
            .net
            .handle
            .connect(node.net.dial_addr())
            .await
            .expect("connect");
        let name = NetworkName::new(TEST_NETWORK).expect("valid name");
        let mut ours = self
            .control
            .open_stream(target, relay_protocol(&name).expect("protocol"))
            .await
            .expect("open relay stream");
        write_frame(&mut ours, &codec::encode(&hello), MAX_FRAME_SIZE)
            .await
            .expect("hello");
        (target, ours)
    }

    /// Waits until the network reports `peer` gone.
    pub(crate) async fn wait_disconnected(&self, peer: PeerId, timeout: Duration) {
        let mut events = self.net.handle.subscribe();
        let handle = self.net.handle.clone();
        wait_on(&mut events, timeout, "disconnection", || {
            let handle = handle.clone();
            async move {
                let peers = handle.peers().await.expect("network runs");
                !peers.iter().any(|p| p.peer == peer)
            }
        })
        .await;
    }
}

/// Writes one relay message.
pub(crate) async fn send(stream: &mut Stream, msg: &RelayMessage) {
    write_frame(stream, &codec::encode(msg), MAX_FRAME_SIZE)
        .await
        .expect("write relay frame");
}

/// Reads one relay message.
pub(crate) async fn recv(stream: &mut Stream, timeout: Duration) -> RelayMessage {
    let frame = tokio::time::timeout(timeout, read_frame(stream, MAX_FRAME_SIZE))
        .await
        .expect("a relay frame in time")
        .expect("relay frame");
    codec::decode(&frame).expect("relay message decodes")
}

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
