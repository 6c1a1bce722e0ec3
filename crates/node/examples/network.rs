//! What a user of the PlayerGold network layer does first, in one program (`cargo run --example
//! network`): build two nodes from config, start them, connect one to the other, propagate a
//! transaction, watch blocks arrive, and let a late third node sync the chain.
//!
//! ```text
//!  node A (validator) ── TLS 1.3 ── node B ── TLS 1.3 ── node C (joins late, syncs)
//!    produces blocks        submits a tx         catches up headers-first
//! ```
//!
//! Everything runs on 127.0.0.1 with mDNS and the DHT off, in temporary directories, and stops
//! by itself (each wait is bounded).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_net::{MemoryStore, NetworkConfig, NetworkHandle, NetworkName};
use playergold_primitives::{
    Address, Amount, Genesis, Keypair, MAX_BLOCK_TXS, Nonce, TimestampMs, UnsignedTransaction,
};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::PropagationConfig;
use playergold_services::{
    RelayHandle, RelayService, RelayServiceEvent, SyncHandle, SyncService, SyncServiceConfig,
};
use tokio::sync::broadcast;

/// Longest wait for each step.
const STEP: Duration = Duration::from_secs(30);

/// One node: chain, network, relay and sync.
struct Node {
    name: &'static str,
    chain: Arc<Blockchain>,
    net: NetworkHandle,
    relay: RelayHandle,
    _sync: SyncHandle,
}

impl Node {
    async fn start(
        name: &'static str,
        dir: &std::path::Path,
        genesis: &Genesis,
    ) -> anyhow::Result<Node> {
        let chain = Arc::new(Blockchain::open(
            &dir.join(format!("{name}.redb")),
            genesis.clone(),
            Arc::new(ProofOfAuthority::from_genesis(genesis)),
            ChainConfig::default(),
        )?);
        let mut config = NetworkConfig::new(NetworkName::new(genesis.network.clone())?);
        config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
        config.allow_local_addresses = true;
        config.mdns = false;
        config.dht = false;
        config.min_peers = 0;
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (net, _task) = playergold_net::start(config, key, Box::new(MemoryStore::new())).await?;
        let (relay, _) = RelayService::start(
            net.clone(),
            chain.clone(),
            PropagationConfig::default(),
            Capabilities::NONE,
        )?;
        let (sync, _) = SyncService::start(
            net.clone(),
            chain.clone(),
            SyncServiceConfig::default(),
            Some(relay.subscribe()),
        )?;
        println!("{name}: peer id {}", net.local_peer_id());
        Ok(Node {
            name,
            chain,
            net,
            relay,
            _sync: sync,
        })
    }

    async fn dial_addr(&self) -> anyhow::Result<playergold_net::Multiaddr> {
        let addr = self
            .net
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .context("no listen address")?;
        Ok(format!("{addr}/p2p/{}", self.net.local_peer_id()).parse()?)
    }
}

/// Waits for a relay event matching `want`.
async fn wait_event(
    events: &mut broadcast::Receiver<RelayServiceEvent>,
    what: &str,
    want: impl Fn(&RelayServiceEvent) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(STEP, async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return Ok(()),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("relay stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("timed out waiting for {what}"))?
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let validator = Keypair::generate();
    let mut genesis = Genesis::devnet("example", vec![validator.public()], TimestampMs::now())?;
    genesis.slot_duration_ms = 500;

    // 1. Build and start two nodes, connect B to A.
    let a = Node::start("A", dir.path(), &genesis).await?;
    let b = Node::start("B", dir.path(), &genesis).await?;
    b.net.connect(a.dial_addr().await?).await?;
    println!("B connected to A over TLS 1.3");

    // 2. Propagate a transaction submitted at B; A receives it.
    let mut a_events = a.relay.subscribe();
    let sender = Keypair::generate();
    let tx = UnsignedTransaction {
        from: sender.public(),
        to: Address([0x42; 20]),
        amount: Amount(10),
        fee: Amount(1),
        nonce: Nonce(0),
        timestamp_ms: TimestampMs::now(),
    }
    .sign(&sender);
    let id = b.relay.submit_transaction(tx).await?;
    wait_event(
        &mut a_events,
        "the tx at A",
        |e| matches!(e, RelayServiceEvent::NewTransaction { id: got, .. } if *got == id),
    )
    .await?;
    println!("tx {id} submitted at B reached A");

    // 3. A produces five blocks in its slots; B watches them arrive.
    let mut b_events = b.relay.subscribe();
    for _ in 0..5 {
        let now = TimestampMs::now();
        let at = a
            .chain
            .next_production_time(&validator, now)
            .context("A is the validator")?;
        tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now.0))).await;
        let block = a.chain.build_block(&validator, at, MAX_BLOCK_TXS);
        let (height, txs) = (block.header.height, block.txs.len());
        let hash = a.relay.propagate_block(block).await?;
        wait_event(
            &mut b_events,
            "the block at B",
            |e| matches!(e, RelayServiceEvent::NewBlock { hash: got, .. } if *got == hash),
        )
        .await?;
        println!(
            "{}: block {} at height {} ({txs} txs) arrived at B",
            a.name, hash, height.0
        );
    }
    println!("tx status at B: {:?}", b.chain.tx_status(&id)?);

    // 4. A third node joins late and syncs the chain from B.
    let c = Node::start("C", dir.path(), &genesis).await?;
    c.net.connect(b.dial_addr().await?).await?;
    let target = b.chain.tip();
    tokio::time::timeout(STEP, async {
        while c.chain.tip().hash != target.hash {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("C did not sync")?;
    println!(
        "{} synced to height {} ({})",
        c.name,
        c.chain.tip().height.0,
        c.chain.tip().hash
    );
    Ok(())
}
