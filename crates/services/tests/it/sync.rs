//! Sync over real TLS nodes on 127.0.0.0/8, each with its own chain on one devnet genesis whose
//! validator keys the test holds: a late joiner, an incremental catch-up, a restart mid-sync
//! (after a clean stop, and after a SIGKILL of a node in its own process), equal-work forks,
//! and a 6/4 partition that heals. Every wait is on events (the sync status watch, network
//! events, the killed process's reports) with a deadline, except the wait for the status
//! handshakes, which reads counters that change without an event.
//!
//! Node indexes (loopback addresses): 100-105 late joiner, 110-112 incremental, 120-124
//! restart, 125-129 kill and restart, 130-139 partition, 140-141 orphan trigger, 142-143 another genesis, 144-147
//! stalling peer, 150-153 equal-work forks.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::join_all;
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_net::PeerId;
use playergold_net::framing::{read_frame, write_frame};
use playergold_net::testnet::{TEST_NETWORK, TestNode, node_ip, test_config};
use playergold_primitives::codec;
use playergold_primitives::{Block, BlockHash, Genesis, Height, Keypair, TimestampMs, Transaction};
use playergold_protocol::Capabilities;
use playergold_protocol::partition::{NetworkState, PartitionConfig, RecoveryAction};
use playergold_protocol::relay::PropagationConfig;
use playergold_protocol::reputation::Reason;
use playergold_protocol::sync::{SyncConfig, SyncRequest, SyncResponse, SyncServeHost, SyncState};
use playergold_services::relay::RelayServiceEvent;
use playergold_services::sync::{ChainView, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, sync_protocol};
use playergold_services::{
    RelayHandle, RelayService, SyncEvent, SyncHandle, SyncService, SyncServiceConfig, SyncStatus,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{init_tracing, tx};

/// Slot length of the devnet genesis.
const SLOT_MS: u64 = 1_000;
/// Genesis time: far enough back that thousands of slots after it are still in the past.
const GENESIS_MS: u64 = 1_600_000_000_000;
/// Blocks the late joiner (and the restarted node) catch up on.
const LINE_LEN: usize = 5_000;
/// Setup deadlines (connections, handshakes) on a loaded 2-core machine.
const SETUP: Duration = Duration::from_secs(30);
/// How often [`SyncNode::wait_handshakes`] reads the sync counters.
const HANDSHAKE_POLL: Duration = Duration::from_millis(20);
/// Deadline of a catch-up of `LINE_LEN` blocks.
const CATCH_UP: Duration = Duration::from_secs(90);

/// A genesis with `n` validators (node `i` of a test holds key `i`), and a directory for every
/// node's chain.
struct Net {
    validators: Vec<Keypair>,
    genesis: Genesis,
    dir: tempfile::TempDir,
}

impl Net {
    fn new(validators: u8) -> Net {
        let validators: Vec<Keypair> = (1..=validators)
            .map(|i| Keypair::from_secret(&[i; 32]))
            .collect();
        let genesis = Genesis::devnet(
            TEST_NETWORK,
            validators.iter().map(Keypair::public).collect(),
            TimestampMs(GENESIS_MS),
        )
        .expect("valid genesis");
        Net {
            validators,
            genesis,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn open_chain(&self, name: &str) -> Arc<Blockchain> {
        self.open_chain_at(&self.path(name))
    }

    /// This network's chain in the database at `path`.
    fn open_chain_at(&self, path: &std::path::Path) -> Arc<Blockchain> {
        Arc::new(
            Blockchain::open(
                path,
                self.genesis.clone(),
                Arc::new(ProofOfAuthority::from_genesis(&self.genesis)),
                ChainConfig::default(),
            )
            .expect("open chain"),
        )
    }

    /// A chain named `name` holding `blocks` (imported in a few durable batches).
    fn chain_with(&self, name: &str, blocks: &[Block]) -> Arc<Blockchain> {
        let chain = self.open_chain(name);
        for chunk in blocks.chunks(1_000) {
            let batch = chain.import_blocks(chunk.to_vec(), TimestampMs::now());
            assert!(
                batch.error.is_none(),
                "test blocks import: {:?}",
                batch.error
            );
        }
        chain
    }

    /// The first slot after `after` whose validator is one of `owners`.
    fn next_slot(&self, after: u64, owners: &[usize]) -> u64 {
        let n = self.validators.len() as u64;
        (after + 1..)
            .find(|s| owners.contains(&((s % n) as usize)))
            .expect("some slot is ours")
    }

    /// A block on `parent` in `slot`, signed by that slot's validator.
    fn block_at(&self, parent: &Block, slot: u64, txs: Vec<Transaction>) -> Block {
        let key = &self.validators[(slot % self.validators.len() as u64) as usize];
        Block::build(
            key,
            parent.hash(),
            Height(parent.header.height.0 + 1),
            TimestampMs(slot * SLOT_MS),
            txs,
        )
    }
}

fn slot_of(block: &Block) -> u64 {
    block.header.timestamp_ms.0 / SLOT_MS
}

/// `LINE_LEN` empty blocks on the 3-validator genesis, one per slot (built once per test binary:
/// the genesis and the keys are fixed, so every `Net::new(3)` accepts them).
fn line() -> &'static [Block] {
    static LINE: OnceLock<Vec<Block>> = OnceLock::new();
    LINE.get_or_init(|| {
        let net = Net::new(3);
        let mut blocks = Vec::with_capacity(LINE_LEN);
        let mut parent = net.genesis.block();
        for _ in 0..LINE_LEN {
            let block = net.block_at(&parent, slot_of(&parent) + 1, Vec::new());
            blocks.push(block.clone());
            parent = block;
        }
        blocks
    })
}

/// A node: network, chain, sync service, and optionally the relay feeding it.
struct SyncNode {
    net: TestNode,
    chain: Arc<Blockchain>,
    sync: SyncHandle,
    status: watch::Receiver<SyncStatus>,
    events: broadcast::Receiver<SyncEvent>,
    task: JoinHandle<()>,
    relay: Option<(
        RelayHandle,
        JoinHandle<()>,
        broadcast::Receiver<RelayServiceEvent>,
    )>,
}

impl SyncNode {
    /// Starts node `index` on `chain`. Only the test dials: no outbound target, no DHT (its
    /// lookups would dial across a test's partition).
    async fn spawn(
        index: u8,
        chain: Arc<Blockchain>,
        config: SyncServiceConfig,
        relay: bool,
    ) -> SyncNode {
        let mut cfg = test_config(node_ip(index));
        cfg.min_peers = 0;
        cfg.dht = false;
        let net = TestNode::spawn_fresh(cfg).await.expect("network starts");
        let relay = relay.then(|| {
            let (handle, task) = RelayService::start(
                net.handle.clone(),
                chain.clone(),
                PropagationConfig::default(),
                Capabilities::NONE,
            )
            .expect("relay starts");
            let events = handle.subscribe();
            (handle, task, events)
        });
        let relay_events = relay.as_ref().map(|(handle, ..)| handle.subscribe());
        let (sync, task) =
            SyncService::start(net.handle.clone(), chain.clone(), config, relay_events)
                .expect("sync starts");
        SyncNode {
            status: sync.watch(),
            events: sync.subscribe(),
            net,
            chain,
            sync,
            task,
            relay,
        }
    }

    fn peer_id(&self) -> PeerId {
        self.net.peer_id()
    }

    async fn connect(&self, other: &SyncNode) {
        self.net
            .handle
            .connect(other.net.dial_addr())
            .await
            .expect("connect");
    }

    /// Waits until `check` holds for this node's status, re-checking on every status change.
    async fn wait_status(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&SyncStatus, &Blockchain) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let status = *self.status.borrow_and_update();
            if check(&status, &self.chain) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.status.changed()).await {
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; status {status:?}, tip {:?}",
                    self.chain.tip()
                ),
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("sync stopped while waiting for {what}"),
            }
        }
    }

    /// Waits until our best block is `hash`.
    async fn wait_tip(&mut self, hash: BlockHash, timeout: Duration) {
        self.wait_status(timeout, &format!("tip {hash}"), |_, chain| {
            chain.tip().hash == hash
        })
        .await
    }

    /// Waits for a sync event matching `pred` and returns it (earlier events are consumed).
    async fn wait_event(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&SyncEvent) -> bool,
    ) -> SyncEvent {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
                Ok(Ok(event)) if pred(&event) => return event,
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    panic!("sync stopped while waiting for {what}")
                }
            }
        }
    }

    /// Collects sync events until one matches `pred`; returns them all, that one last.
    async fn events_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&SyncEvent) -> bool,
    ) -> Vec<SyncEvent> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}: {seen:?}"),
                Ok(Ok(event)) => {
                    let found = pred(&event);
                    seen.push(event);
                    if found {
                        return seen;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    panic!("sync stopped while waiting for {what}")
                }
            }
        }
    }

    /// Waits until this node's sync has sent its status handshake to `n` peers and answered
    /// theirs: from then on every status it hands those peers is the one it had here. Counters
    /// change without an event, so they are read every `HANDSHAKE_POLL`.
    async fn wait_handshakes(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.sync.metrics().await.expect("sync runs");
            if m.requests_sent >= n && m.inbound_requests >= n {
                return;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {n} sync handshakes: {m:?}");
            }
            tokio::time::sleep(HANDSHAKE_POLL).await;
        }
    }

    /// Waits until this node's relay has `n` peers with streams open both ways.
    async fn wait_relay_peers(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (relay, _, events) = self.relay.as_mut().expect("runs the relay");
        loop {
            let peers = relay.peers().await.expect("relay runs");
            if peers.len() == n && peers.iter().all(|p| p.outbound_open && p.inbound_open) {
                return;
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => panic!("timed out after {timeout:?} waiting for {n} relay peers"),
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => panic!("relay stopped"),
            }
        }
    }

    /// Sync events received so far.
    fn drain_events(&mut self) -> Vec<SyncEvent> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return out,
            }
        }
    }

    /// Relay offences received so far.
    fn relay_offences(&mut self) -> Vec<(PeerId, Reason)> {
        let Some((_, _, events)) = self.relay.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            match events.try_recv() {
                Ok(RelayServiceEvent::Offence { peer, reason }) => out.push((peer, reason)),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return out,
            }
        }
    }

    /// Stops every service and the network; returns the chain (the only handle left to it).
    async fn stop(self) -> Arc<Blockchain> {
        self.sync.shutdown().await.expect("sync stops");
        self.task.await.expect("sync task ends");
        if let Some((relay, task, _)) = self.relay {
            let _ = relay.shutdown().await;
            let _ = task.await;
        }
        self.net.stop().await;
        self.chain
    }
}

/// Penalties in `events`.
fn penalties(events: &[SyncEvent]) -> Vec<(PeerId, Reason)> {
    events
        .iter()
        .filter_map(|e| match e {
            SyncEvent::Penalty { peer, reason } => Some((*peer, *reason)),
            SyncEvent::Disconnected {
                peer,
                penalized: true,
            } => Some((*peer, Reason::Stalled)),
            _ => None,
        })
        .collect()
}

/// Waits until every node has exactly `expected(i)` peers.
async fn wait_peer_sets(nodes: &[SyncNode], expected: impl Fn(usize) -> Vec<PeerId>) {
    let nets: Vec<&TestNode> = nodes.iter().map(|n| &n.net).collect();
    for (i, net) in nets.iter().enumerate() {
        let mut want = expected(i);
        want.sort();
        net.wait_peers(SETUP, |peers| {
            let mut have: Vec<PeerId> = peers.iter().map(|p| p.peer).collect();
            have.sort();
            have == want
        })
        .await
        .unwrap_or_else(|e| panic!("node {i} peers: {e}"));
    }
}

/// Five nodes each holding 5,000 blocks; a sixth, empty, joins them and reaches the same tip,
/// fetching bodies from several of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_reaches_the_tip_of_a_five_node_network() {
    init_tracing();
    let net = Net::new(3);
    let blocks = line();
    let tip = blocks[LINE_LEN - 1].hash();
    let mut holders = Vec::new();
    for i in 0..5u8 {
        let chain = net.chain_with(&format!("holder{i}"), blocks);
        holders.push(SyncNode::spawn(100 + i, chain, SyncServiceConfig::default(), false).await);
    }
    for i in 0..5 {
        holders[i].connect(&holders[(i + 1) % 5]).await;
    }
    let mut joiner = SyncNode::spawn(
        105,
        net.open_chain("joiner"),
        SyncServiceConfig::default(),
        false,
    )
    .await;
    let started = Instant::now();
    for holder in &holders {
        joiner.connect(holder).await;
    }
    joiner.wait_tip(tip, CATCH_UP).await;
    let took = started.elapsed();
    joiner
        .wait_status(SETUP, "synced", |s, _| {
            s.progress.state == SyncState::Synced
        })
        .await;
    eprintln!(
        "late joiner: {LINE_LEN} blocks in {took:?} ({:.0} blocks/s)",
        LINE_LEN as f64 / took.as_secs_f64()
    );

    let metrics = joiner.sync.metrics().await.expect("metrics");
    assert_eq!(metrics.scheduler.blocks_received, LINE_LEN as u64);
    assert_eq!(metrics.blocks_imported, LINE_LEN as u64);
    assert_eq!(metrics.blocks_refused + metrics.import_failures, 0);
    let progress = joiner.sync.progress();
    assert_eq!(progress.height, Height(LINE_LEN as u64));
    assert_eq!(progress.target_height, Height(LINE_LEN as u64));
    let mut serving = 0;
    for holder in &holders {
        if holder
            .sync
            .metrics()
            .await
            .expect("metrics")
            .server
            .blocks_sent
            > 0
        {
            serving += 1;
        }
    }
    assert!(serving >= 2, "bodies came from {serving} peer(s)");
    assert_eq!(penalties(&joiner.drain_events()), vec![]);
    for holder in &mut holders {
        assert_eq!(penalties(&holder.drain_events()), vec![]);
    }
    holders.push(joiner);
    join_all(holders.into_iter().map(SyncNode::stop)).await;
}

/// A node 50 blocks behind fetches exactly those 50 blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fifty_blocks_behind_downloads_only_those_fifty() {
    init_tracing();
    let net = Net::new(3);
    let blocks = &line()[..1_050];
    let mut holders = Vec::new();
    for i in 0..2u8 {
        let chain = net.chain_with(&format!("holder{i}"), blocks);
        holders.push(SyncNode::spawn(110 + i, chain, SyncServiceConfig::default(), false).await);
    }
    let behind = net.chain_with("behind", &blocks[..1_000]);
    let mut node = SyncNode::spawn(112, behind, SyncServiceConfig::default(), false).await;
    for holder in &holders {
        node.connect(holder).await;
    }
    node.wait_tip(blocks[1_049].hash(), SETUP).await;

    let metrics = node.sync.metrics().await.expect("metrics");
    assert_eq!(metrics.scheduler.blocks_received, 50, "{metrics:?}");
    assert_eq!(metrics.blocks_imported, 50);
    let mut sent = 0;
    for holder in &holders {
        sent += holder
            .sync
            .metrics()
            .await
            .expect("metrics")
            .server
            .blocks_sent;
    }
    assert_eq!(sent, 50, "the holders sent no more than the missing blocks");
    assert_eq!(penalties(&node.drain_events()), vec![]);
    holders.push(node);
    join_all(holders.into_iter().map(SyncNode::stop)).await;
}

/// A node stopped in the middle of a catch-up keeps what it stored; restarted on the same data
/// directory it fetches only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_mid_sync_resumes_from_what_it_stored() {
    init_tracing();
    let net = Net::new(3);
    let blocks = line();
    let tip = blocks[LINE_LEN - 1].hash();
    let mut holders = Vec::new();
    for i in 0..3u8 {
        let chain = net.chain_with(&format!("holder{i}"), blocks);
        holders.push(SyncNode::spawn(120 + i, chain, SyncServiceConfig::default(), false).await);
    }
    let mut node = SyncNode::spawn(
        123,
        net.open_chain("restarted"),
        SyncServiceConfig::default(),
        false,
    )
    .await;
    for holder in &holders {
        node.connect(holder).await;
    }
    node.wait_status(CATCH_UP, "a first part of the chain", |s, _| {
        s.progress.height.0 >= 500
    })
    .await;
    let chain = node.stop().await;
    let stored = chain.tip().height.0;
    drop(chain);
    assert!(
        (500..LINE_LEN as u64).contains(&stored),
        "stopped mid-sync at {stored}"
    );

    // Same data directory, new process state (and a new network identity).
    let chain = net.open_chain("restarted");
    assert_eq!(chain.tip().height.0, stored, "what was imported survived");
    let mut node = SyncNode::spawn(124, chain, SyncServiceConfig::default(), false).await;
    for holder in &holders {
        node.connect(holder).await;
    }
    node.wait_tip(tip, CATCH_UP).await;
    let metrics = node.sync.metrics().await.expect("metrics");
    assert_eq!(
        metrics.scheduler.blocks_received,
        LINE_LEN as u64 - stored,
        "only the missing blocks were fetched"
    );
    assert_eq!(penalties(&node.drain_events()), vec![]);
    holders.push(node);
    join_all(holders.into_iter().map(SyncNode::stop)).await;
}

/// Set (to `<chain path>|<addr>,<addr>,...`) when this binary runs as the syncing process of
/// [`a_node_killed_mid_sync_resumes_from_what_it_stored`].
const KILL_CHILD_ENV: &str = "PLAYERGOLD_SYNC_KILL_CHILD";
/// Prefix of the child's height reports on stdout.
const KILL_CHILD_REPORT: &str = "PGSYNC height ";

/// The child's role: syncs the chain at the path from the holders, printing its height after
/// every import, until it is killed.
async fn run_kill_child(spec: &str) {
    let (path, addrs) = spec.split_once('|').expect("<path>|<addrs>");
    let net = Net::new(3);
    let chain = net.open_chain_at(std::path::Path::new(path));
    // Its temporary directory goes now: a killed process removes nothing.
    drop(net);
    let mut node = SyncNode::spawn(125, chain, SyncServiceConfig::default(), false).await;
    for addr in addrs.split(',') {
        node.net
            .handle
            .connect(addr.parse().expect("holder address"))
            .await
            .expect("connect");
    }
    loop {
        let height = node.status.borrow_and_update().progress.height.0;
        println!("{KILL_CHILD_REPORT}{height}");
        if node.status.changed().await.is_err() {
            return;
        }
    }
}

/// A node killed (SIGKILL, in its own process) in the middle of a catch-up keeps what it
/// committed; restarted on the same database it fetches only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_sync_resumes_from_what_it_stored() {
    if let Ok(spec) = std::env::var(KILL_CHILD_ENV) {
        run_kill_child(&spec).await;
        return;
    }
    init_tracing();
    let net = Net::new(3);
    let blocks = line();
    let tip = blocks[LINE_LEN - 1].hash();
    let mut holders = Vec::new();
    for i in 0..3u8 {
        let chain = net.chain_with(&format!("holder{i}"), blocks);
        holders.push(SyncNode::spawn(126 + i, chain, SyncServiceConfig::default(), false).await);
    }
    let path = net.path("killed");
    let addrs: Vec<String> = holders
        .iter()
        .map(|h| h.net.dial_addr().to_string())
        .collect();
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::a_node_killed_mid_sync_resumes_from_what_it_stored");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([&name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(
            KILL_CHILD_ENV,
            format!("{}|{}", path.display(), addrs.join(",")),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("the syncing process starts");
    let stdout = child.stdout.take().expect("piped stdout");
    // Kills the child at its first report of 500 blocks or more (or on a deadline or its exit),
    // and says whether that report came.
    let killed_mid_sync = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel::<u64>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // libtest may print `test <name> ... ` on the same line first.
                let height = line
                    .find(KILL_CHILD_REPORT)
                    .and_then(|at| line[at + KILL_CHILD_REPORT.len()..].trim().parse().ok());
                if let Some(height) = height
                    && tx.send(height).is_err()
                {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + CATCH_UP;
        let mut reached = false;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(height) if height >= 500 => {
                    reached = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // SIGKILL: no shutdown, no flush beyond what the store committed.
        let _ = child.kill();
        let _ = child.wait();
        reached
    })
    .await
    .expect("the watcher ends");
    assert!(killed_mid_sync, "the child never reported 500 blocks");

    let chain = net.open_chain_at(&path);
    let stored = chain.tip().height.0;
    assert!(
        (500..LINE_LEN as u64).contains(&stored),
        "killed mid-sync at {stored}"
    );
    assert_eq!(chain.tip().hash, blocks[stored as usize - 1].hash());
    let mut node = SyncNode::spawn(129, chain, SyncServiceConfig::default(), false).await;
    for holder in &holders {
        node.connect(holder).await;
    }
    node.wait_tip(tip, CATCH_UP).await;
    let metrics = node.sync.metrics().await.expect("metrics");
    assert_eq!(
        metrics.scheduler.blocks_received,
        LINE_LEN as u64 - stored,
        "only the missing blocks were fetched"
    );
    assert_eq!(penalties(&node.drain_events()), vec![]);
    holders.push(node);
    join_all(holders.into_iter().map(SyncNode::stop)).await;
}

/// The test's block production: `producer` builds on its own tip in the first slot of its
/// validator after `after`, and pushes the block through its relay.
async fn produce(net: &Net, node: &SyncNode, producer: usize, txs: Vec<Transaction>) -> Block {
    let tip = node.chain.tip();
    let parent = node
        .chain
        .block(&tip.hash)
        .expect("store")
        .expect("tip block");
    let slot = net.next_slot(slot_of(&parent), &[producer]);
    let block = net.block_at(&parent, slot, txs);
    let (relay, ..) = node.relay.as_ref().expect("producers run the relay");
    relay
        .propagate_block(block.clone())
        .await
        .expect("own block imports");
    block
}

/// Waits until every node in `group` has `block` as its best block.
async fn wait_group_tip(
    nodes: &mut [SyncNode],
    group: &[usize],
    hash: BlockHash,
    timeout: Duration,
) {
    for &i in group {
        nodes[i].wait_tip(hash, timeout).await;
    }
}

/// Ten producing nodes split 6/4; both sides produce; the smaller side sees the partition; after
/// the split heals everyone follows the heavier side, the losing branch's transactions are back
/// in mempools, and nobody is penalised for valid blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_onto_the_heavier_side() {
    init_tracing();
    const N: usize = 10;
    let majority: Vec<usize> = (0..6).collect();
    let minority: Vec<usize> = (6..N).collect();
    let net = Net::new(N as u8);
    let config = SyncServiceConfig {
        sync: SyncConfig {
            // Generous for a loaded 2-core machine: no stall penalties for slow honest peers.
            initial_stall_timeout: Duration::from_secs(5),
            // The heal is found by the handshake on reconnection, not by a poll.
            status_poll_interval: Duration::from_secs(120),
            ..SyncConfig::default()
        },
        partition: PartitionConfig {
            // Fewer than five peers is the warning sign: the majority keeps five.
            min_peers: 5,
            low_peers_grace: Duration::from_secs(1),
            divergence_hold: Duration::from_secs(5),
            heal_hold: Duration::from_secs(2),
            // Production here is driven by the test, not the clock.
            stale_tip_slots: 600,
            ..PartitionConfig::default()
        },
        ..SyncServiceConfig::default()
    };
    let mut nodes = Vec::new();
    for i in 0..N {
        let chain = net.open_chain(&format!("node{i}"));
        nodes.push(SyncNode::spawn(130 + i as u8, chain, config.clone(), true).await);
    }
    let ids: Vec<PeerId> = nodes.iter().map(SyncNode::peer_id).collect();
    for i in 0..N {
        for j in i + 1..N {
            nodes[i].connect(&nodes[j]).await;
        }
    }
    wait_peer_sets(&nodes, |i| {
        ids.iter().copied().filter(|p| *p != ids[i]).collect()
    })
    .await;
    for node in &mut nodes {
        node.wait_status(SETUP, "healthy", |s, _| s.network == NetworkState::Healthy)
            .await;
    }
    let all: Vec<usize> = (0..N).collect();
    let mut last = None;
    for producer in 0..3 {
        let block = produce(&net, &nodes[producer], producer, Vec::new()).await;
        wait_group_tip(&mut nodes, &all, block.hash(), SETUP).await;
        last = Some(block);
    }
    let fork_point = last.expect("a common prefix").header.height;
    for (i, node) in nodes.iter_mut().enumerate() {
        assert_eq!(
            penalties(&node.drain_events()),
            vec![],
            "node {i} before the split"
        );
    }

    // Split: drop every link between the groups. Nobody redials (no outbound target, no DHT, no
    // bootstrap nodes), so the test alone controls the links.
    for &a in &majority {
        for &b in &minority {
            let _ = nodes[a].net.handle.disconnect(ids[b]).await;
        }
    }
    let group_of = |i: usize| {
        if majority.contains(&i) {
            &majority
        } else {
            &minority
        }
    };
    wait_peer_sets(&nodes, |i| {
        group_of(i)
            .iter()
            .filter(|j| **j != i)
            .map(|j| ids[*j])
            .collect()
    })
    .await;

    // Both sides produce: the majority six blocks, the minority three carrying transactions.
    let mut heavy_tip = None;
    for k in 0..6 {
        let producer = majority[k % majority.len()];
        let block = produce(&net, &nodes[producer], producer, Vec::new()).await;
        wait_group_tip(&mut nodes, &majority, block.hash(), SETUP).await;
        heavy_tip = Some(block.hash());
    }
    let heavy_tip = heavy_tip.expect("majority produced");
    let mut losing_txs = Vec::new();
    for k in 0..3 {
        let producer = minority[k % minority.len()];
        let txs: Vec<Transaction> = (0..2).map(|t| tx(900 + (k * 2 + t) as u16, 0)).collect();
        losing_txs.extend(txs.iter().map(Transaction::id));
        let block = produce(&net, &nodes[producer], producer, txs).await;
        wait_group_tip(&mut nodes, &minority, block.hash(), SETUP).await;
    }
    for &b in &minority {
        nodes[b]
            .wait_status(SETUP, "the partition noticed", |s, _| {
                s.network != NetworkState::Healthy
            })
            .await;
        let report = nodes[b].sync.network_report().await.expect("report");
        assert!(report.low_peers, "{report:?}");
        // The change was published with its signals, and recovery started: the address book
        // is redialled through the network handle (nothing to dial here: no outbound target),
        // at once or within its interval.
        let (mut changed, mut redialled) = (false, false);
        let events = nodes[b]
            .events_until(SETUP, "the state change and a redial", |e| {
                match e {
                    SyncEvent::NetworkStateChanged { .. } => changed = true,
                    SyncEvent::Recovery {
                        action: RecoveryAction::RedialAddressBook,
                        ..
                    } => redialled = true,
                    _ => {}
                }
                changed && redialled
            })
            .await;
        assert!(
            events.iter().any(|e| matches!(
                e,
                SyncEvent::NetworkStateChanged {
                    from: NetworkState::Healthy,
                    to: NetworkState::Degraded | NetworkState::Partitioned,
                    report,
                } if report.low_peers && report.peers == minority.len() - 1
            )),
            "node {b}: {events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(
                e,
                SyncEvent::Recovery {
                    action: RecoveryAction::RedialAddressBook,
                    carried_out: true,
                }
            )),
            "node {b}: {events:?}"
        );
        assert_eq!(penalties(&events), vec![], "node {b}");
    }
    for &a in &majority {
        assert_eq!(nodes[a].sync.network_state(), NetworkState::Healthy);
    }

    // Heal: the minority reconnects to everyone.
    for &b in &minority {
        for &a in &majority {
            nodes[b].connect(&nodes[a]).await;
        }
    }
    wait_peer_sets(&nodes, |i| {
        ids.iter().copied().filter(|p| *p != ids[i]).collect()
    })
    .await;
    wait_group_tip(&mut nodes, &all, heavy_tip, SETUP).await;
    for node in &nodes {
        assert!(node.chain.tip().height > fork_point);
    }
    for &b in &minority {
        for id in &losing_txs {
            assert!(
                nodes[b].chain.mempool_contains(id),
                "node {b}: transaction {id} of the losing branch is back in the mempool"
            );
        }
        let events = nodes[b].drain_events();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, SyncEvent::Imported { reorg: true, .. })),
            "node {b} switched branches through sync"
        );
        nodes[b]
            .wait_status(SETUP, "healthy again", |s, _| {
                s.network == NetworkState::Healthy
            })
            .await;
        assert_eq!(penalties(&events), vec![], "node {b}");
    }
    for node in &mut nodes {
        assert_eq!(penalties(&node.drain_events()), vec![]);
        assert_eq!(node.relay_offences(), vec![]);
    }
    join_all(nodes.into_iter().map(SyncNode::stop)).await;
}

/// Four nodes, two on each of two branches of equal work (same length from a common block):
/// once connected every node ends on the same tip, the one the chain's fork choice prefers
/// (here: the earlier timestamp), and nobody is penalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_work_forks_end_on_the_same_tip_everywhere() {
    init_tracing();
    let net = Net::new(3);
    let prefix = &line()[..20];
    let base = prefix.last().expect("a common prefix");
    // Branch A: validators 0 and 1 in the next slots. Branch B: the same number of blocks by
    // validator 2, later in time.
    let mut a = prefix.to_vec();
    let mut b = prefix.to_vec();
    let mut slot = slot_of(base);
    for _ in 0..3 {
        slot = net.next_slot(slot, &[0, 1]);
        let block = net.block_at(a.last().expect("parent"), slot, Vec::new());
        a.push(block);
    }
    let mut slot_b = slot_of(base);
    for _ in 0..3 {
        slot_b = net.next_slot(slot_b, &[2]);
        let block = net.block_at(b.last().expect("parent"), slot_b, Vec::new());
        b.push(block);
    }
    let (tip_a, tip_b) = (a.last().expect("tip").hash(), b.last().expect("tip").hash());
    // What fork choice says, asked of a chain that holds both branches.
    let judge = net.chain_with("judge", &a);
    let batch = judge.import_blocks(b[prefix.len()..].to_vec(), TimestampMs::now());
    assert!(batch.error.is_none(), "{:?}", batch.error);
    let winner = judge.tip().hash;
    assert_eq!(winner, tip_a, "the earlier branch wins the tie");
    let (ka, kb) = (
        judge.fork_key(&tip_a).expect("known"),
        judge.fork_key(&tip_b).expect("known"),
    );
    assert_eq!(ka.work, kb.work, "equal work");
    drop(judge);

    let mut nodes = Vec::new();
    for i in 0..4u8 {
        let blocks = if i < 2 { &a } else { &b };
        let chain = net.chain_with(&format!("fork{i}"), blocks);
        nodes.push(SyncNode::spawn(150 + i, chain, SyncServiceConfig::default(), false).await);
    }
    // Each B node meets both A nodes; the pairs on one branch are connected too.
    for (i, j) in [(0, 1), (2, 3), (0, 2), (0, 3), (1, 2), (1, 3)] {
        nodes[i].connect(&nodes[j]).await;
    }
    for node in &mut nodes {
        node.wait_tip(winner, SETUP).await;
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        assert_eq!(penalties(&node.drain_events()), vec![], "node {i}");
        if i >= 2 {
            assert!(
                node.chain.block(&tip_a).expect("store").is_some(),
                "node {i} fetched the other branch"
            );
        }
    }
    join_all(nodes.into_iter().map(SyncNode::stop)).await;
}

/// A relayed block whose parent we lack makes sync fetch its ancestors from the relaying peer,
/// long before any periodic status poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_orphan_makes_sync_fetch_its_ancestors() {
    init_tracing();
    let net = Net::new(3);
    let blocks = &line()[..21];
    let config = SyncServiceConfig {
        sync: SyncConfig {
            status_poll_interval: Duration::from_secs(600),
            ..SyncConfig::default()
        },
        ..SyncServiceConfig::default()
    };
    let mut ahead = SyncNode::spawn(140, net.open_chain("ahead"), config.clone(), true).await;
    let mut behind = SyncNode::spawn(141, net.open_chain("behind"), config, true).await;
    behind.connect(&ahead).await;
    ahead.wait_relay_peers(1, SETUP).await;
    behind.wait_relay_peers(1, SETUP).await;
    // Both at genesis after the handshake: a status `ahead` hands out after the import below
    // would be a lead of its own (height 20), and the scheduler keeps such a lead over an
    // orphan of unknown work, so `behind` would stop at 20 and never ask for the orphan.
    ahead.wait_handshakes(1, SETUP).await;
    behind.wait_handshakes(1, SETUP).await;
    // Twenty blocks reach `ahead` behind the relay's back, then it relays the twenty-first:
    // `behind` cannot connect it.
    let batch = ahead
        .chain
        .import_blocks(blocks[..20].to_vec(), TimestampMs::now());
    assert!(batch.error.is_none());
    let (relay, ..) = ahead.relay.as_ref().expect("relay");
    relay
        .propagate_block(blocks[20].clone())
        .await
        .expect("imports");
    // The import's event, not the tip: the tip moves inside the import, before sync counts it.
    let tip = blocks[20].hash();
    let mut events = behind
        .events_until(
            SETUP,
            "the import of the relayed block",
            |e| matches!(e, SyncEvent::Imported { hash, .. } if *hash == tip),
        )
        .await;
    assert_eq!(behind.chain.tip().hash, tip);
    let metrics = behind.sync.metrics().await.expect("metrics");
    assert!(metrics.blocks_imported >= 20, "{metrics:?}");
    events.extend(behind.drain_events());
    assert_eq!(penalties(&events), vec![]);
    assert_eq!(behind.relay_offences(), vec![]);
    join_all([ahead.stop(), behind.stop()]).await;
}

/// A peer on another genesis (same network name) is disconnected at the handshake, without a
/// penalty: it is on another network, not malicious.
///
/// Each node is on another genesis as the other sees it, and both handshake at once: whichever
/// sees the other's status first closes the connection, and the other then only sees the peer
/// leave (its own handshake fails with the connection), so it reports no disconnect of its own.
/// The test waits for the first disconnect from either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_another_genesis_is_disconnected_without_penalty() {
    init_tracing();
    let ours = Net::new(3);
    let theirs = Net::new(2);
    assert_ne!(ours.genesis.hash(), theirs.genesis.hash());
    let config = SyncServiceConfig::default();
    let mut node = SyncNode::spawn(142, ours.open_chain("ours"), config.clone(), false).await;
    let mut stranger = SyncNode::spawn(143, theirs.open_chain("theirs"), config, false).await;
    stranger.connect(&node).await;
    let (node_id, stranger_id) = (node.peer_id(), stranger.peer_id());
    let is_disconnect = |e: &SyncEvent| matches!(e, SyncEvent::Disconnected { .. });
    let (closer, event) = tokio::select! {
        e = node.wait_event(SETUP, "a disconnect by our node", is_disconnect) => (node_id, e),
        e = stranger.wait_event(SETUP, "a disconnect by the stranger", is_disconnect) => {
            (stranger_id, e)
        }
    };
    let other = if closer == node_id {
        stranger_id
    } else {
        node_id
    };
    assert_eq!(
        event,
        SyncEvent::Disconnected {
            peer: other,
            penalized: false
        },
        "reported by {closer}"
    );
    for side in [&node, &stranger] {
        side.net
            .wait_peers(SETUP, |peers| peers.is_empty())
            .await
            .expect("disconnected");
    }
    assert_eq!(penalties(&node.drain_events()), vec![]);
    assert_eq!(penalties(&stranger.drain_events()), vec![]);
    join_all([node.stop(), stranger.stop()]).await;
}

/// A sync peer that answers status and headers honestly but never sends a body.
struct Staller {
    net: TestNode,
    task: JoinHandle<()>,
}

impl Staller {
    async fn spawn(index: u8, chain: Arc<Blockchain>) -> Staller {
        let mut cfg = test_config(node_ip(index));
        cfg.min_peers = 0;
        cfg.dht = false;
        let net = TestNode::spawn_fresh(cfg).await.expect("network starts");
        let name = playergold_net::NetworkName::new(TEST_NETWORK).expect("valid name");
        let mut incoming = net
            .handle
            .streams()
            .accept(sync_protocol(&name).expect("protocol"))
            .expect("accept sync");
        let view = ChainView::new(chain, Capabilities::NONE);
        let task = tokio::spawn(async move {
            // Streams it withholds replies on stay open until the test ends.
            let mut held = tokio::task::JoinSet::new();
            while let Some((_, mut stream)) = futures::StreamExt::next(&mut incoming).await {
                let Ok(frame) = read_frame(&mut stream, MAX_REQUEST_FRAME).await else {
                    continue;
                };
                let response = match codec::decode::<SyncRequest>(&frame) {
                    Ok(SyncRequest::Status(_)) => SyncResponse::Status(view.status()),
                    Ok(SyncRequest::GetHeaders { locator, max }) => {
                        SyncResponse::Headers(view.headers_after(&locator, max as usize))
                    }
                    Ok(SyncRequest::GetBlocks(_)) | Err(_) => {
                        held.spawn(async move {
                            let _stream = stream;
                            std::future::pending::<()>().await
                        });
                        continue;
                    }
                };
                let _ =
                    write_frame(&mut stream, &codec::encode(&response), MAX_RESPONSE_FRAME).await;
            }
        });
        Staller { net, task }
    }
}

/// One of three sources withholds bodies: sync completes from the other two, and the staller
/// (only it) is penalised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_withholding_bodies_is_penalised_and_sync_completes() {
    init_tracing();
    let net = Net::new(3);
    let blocks = &line()[..1_000];
    let tip = blocks[999].hash();
    let mut holders = Vec::new();
    for i in 0..2u8 {
        let chain = net.chain_with(&format!("holder{i}"), blocks);
        holders.push(SyncNode::spawn(144 + i, chain, SyncServiceConfig::default(), false).await);
    }
    let staller = Staller::spawn(146, net.chain_with("staller", blocks)).await;
    let staller_id = staller.net.peer_id();
    let mut node = SyncNode::spawn(
        147,
        net.open_chain("joiner"),
        SyncServiceConfig::default(),
        false,
    )
    .await;
    node.net
        .handle
        .connect(staller.net.dial_addr())
        .await
        .expect("connect");
    for holder in &holders {
        node.connect(holder).await;
    }
    node.wait_tip(tip, SETUP).await;
    node.wait_event(SETUP, "the staller's penalty", |e| {
        *e == SyncEvent::Penalty {
            peer: staller_id,
            reason: Reason::Stalled,
        }
    })
    .await;
    let others: Vec<(PeerId, Reason)> = penalties(&node.drain_events())
        .into_iter()
        .filter(|(peer, _)| *peer != staller_id)
        .collect();
    assert_eq!(others, vec![], "only the staller is penalised");
    assert!(node.sync.metrics().await.expect("metrics").scheduler.stalls >= 1);
    staller.task.abort();
    staller.net.stop().await;
    holders.push(node);
    join_all(holders.into_iter().map(SyncNode::stop)).await;
}
