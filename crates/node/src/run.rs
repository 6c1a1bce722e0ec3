//! `playergold node`: lock the data dir, open the chain, serve the API, produce in our slots,
//! optionally generate load, report, and shut down cleanly on SIGINT/SIGTERM.
//!
//! ```text
//!  signal / --seconds ──► stop (watch) ──► producer finishes its block and returns
//!                                    ├──► API stops accepting, drains (bounded), /health 503
//!                                    └──► load and status tasks end; chain and lock dropped
//!  relay NewBlock/NewTransaction from peers ──► propagation-delay histogram (/metrics)
//!  every 10 s: status line (peers in/out, best block, sync target, bytes in/out)
//!  sync watch ──► progress bar on stderr while syncing (terminals only)
//! ```
//!
//! What it prints on stdout (start-up, listening addresses, the final tip) is text, or one JSON
//! object per line with `--json`: `{"event": "started" | "listening" | "stopped", ...}`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, BlockHash, Genesis, Height, Keypair, MAX_BLOCK_TXS, Nonce, TimestampMs, TxId,
    UnsignedTransaction,
};
use playergold_protocol::relay::PropagationConfig;
use playergold_protocol::reputation::ReputationConfig;
use playergold_services::{
    RelayError, RelayHandle, RelayService, RelayServiceEvent, ReputationService, SyncHandle,
    SyncService, SyncServiceConfig, forward_reports,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::ConfigArgs;
use crate::lock::DataDirLock;
use crate::metrics::{ItemKind, NodeMetrics};
use crate::{CHAIN_FILE, GENESIS_FILE, NODE_KEY_FILE, keyfile, network};

/// How often the status line is logged.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the load generator submits a batch.
const LOAD_TICK: Duration = Duration::from_millis(100);
/// How long API requests in flight may take to finish once shutdown starts.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most relay events whose items' timestamps are read from the chain in one go: one trip to
/// the blocking pool (and the chain lock) per batch instead of per item under load.
const PROPAGATION_BATCH: usize = 256;

/// The wall-clock time of `at` (an instant in the past): what propagation delays are measured
/// against, as items carry wall-clock timestamps.
fn wall_clock(at: Instant) -> TimestampMs {
    let ago = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
    TimestampMs(TimestampMs::now().0.saturating_sub(ago))
}

/// Arguments of `playergold node`.
#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    /// Data directory (created with a fresh single-validator devnet when `--dev` is given).
    #[arg(long)]
    data_dir: PathBuf,
    /// Initialise the data directory if it is empty (a one-node devnet).
    #[arg(long)]
    dev: bool,
    /// Submit this many signed transactions per second to the local mempool.
    #[arg(long, default_value_t = 0)]
    tps: u32,
    /// Stop by itself after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    seconds: Option<u64>,
    #[command(flatten)]
    config: ConfigArgs,
}

pub(crate) fn run(args: NodeArgs, json: bool) -> anyhow::Result<()> {
    if args.dev {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    }
    // Held until this function returns, after the runtime and the chain are gone.
    let _lock = DataDirLock::acquire(&args.data_dir)?;
    if args.dev && !args.data_dir.join(NODE_KEY_FILE).exists() {
        // With --json, stdout holds only the node's JSON lines; `listening` names the PeerId.
        let print = if json {
            crate::InitOutput::Nothing
        } else {
            crate::InitOutput::Text
        };
        crate::init(&args.data_dir, "devnet", 1_000, print)?;
    }
    let config = args.config.load(Some(&args.data_dir))?;
    crate::init_logging(config.log_format);
    let key = keyfile::load(&args.data_dir.join(NODE_KEY_FILE))?;
    let genesis_path = args.data_dir.join(GENESIS_FILE);
    let genesis: Genesis =
        toml::from_str(&std::fs::read_to_string(&genesis_path).with_context(|| {
            format!(
                "cannot read {}: run `playergold init`",
                genesis_path.display()
            )
        })?)
        .with_context(|| format!("{} is not a valid genesis", genesis_path.display()))?;
    genesis.validate()?;
    let consensus = Arc::new(ProofOfAuthority::from_genesis(&genesis));
    let chain = Arc::new(Blockchain::open(
        &args.data_dir.join(CHAIN_FILE),
        genesis.clone(),
        consensus,
        ChainConfig {
            // Peers rebuild our blocks from their mempools: a transaction waits half a slot to
            // reach them before we include it (see `ChainConfig::block_min_tx_age`).
            block_min_tx_age: Duration::from_millis(genesis.slot_duration_ms / 2),
            ..ChainConfig::default()
        },
    )?);
    let tip = chain.tip();
    if json {
        print_event(&NodeEvent::Started {
            network: &genesis.network,
            genesis_hash: chain.genesis_hash(),
            best_hash: tip.hash,
            best_height: tip.height,
        })?;
    } else {
        println!(
            "node started: network {} genesis {} tip {} at height {}",
            genesis.network,
            chain.genesis_hash(),
            tip.hash,
            tip.height
        );
    }
    let net_config = network::network_config(&config, &genesis)?;
    let net_key = network::network_key(&args.data_dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut metrics = NodeMetrics::new();
        let (net, net_task, _) = playergold_net::start_with_metrics(
            net_config,
            net_key,
            network::address_book_store(chain.clone()),
            metrics.registry_mut().sub_registry_with_prefix("net"),
        )
        .await
        .context("starting the peer-to-peer network")?;
        let p2p: Vec<String> = net
            .listen_addrs()
            .await?
            .iter()
            .map(|addr| format!("{addr}/p2p/{}", net.local_peer_id()))
            .collect();
        if !json {
            println!("peer id {}", net.local_peer_id());
            for addr in &p2p {
                println!("p2p listening on {addr}");
            }
        }
        let metrics = Arc::new(metrics);
        let capabilities = network::capabilities(&config);
        let (reputation, reputation_task) = ReputationService::start(
            net.clone(),
            chain.clone(),
            ReputationConfig::default(),
            Vec::new(),
        )
        .await;
        let (relay, relay_task) = RelayService::start(
            net.clone(),
            chain.clone(),
            PropagationConfig::default(),
            capabilities,
        )
        .context("starting the relay")?;
        let mut sync_config = SyncServiceConfig {
            bootstrap: config.bootstrap.clone(),
            ..SyncServiceConfig::default()
        };
        sync_config.partition.min_peers = config.min_peers;
        sync_config.partition.slot = Duration::from_millis(genesis.slot_duration_ms);
        let (sync, sync_task) = SyncService::start(
            net.clone(),
            chain.clone(),
            sync_config,
            Some(relay.subscribe()),
        )
        .context("starting sync")?;
        let reports = tokio::spawn(forward_reports(
            relay.subscribe(),
            sync.subscribe(),
            reputation.clone(),
            Arc::default(),
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = stop_requested(args.seconds)?;
        let listener = api::bind(config.api).await?;
        if json {
            print_event(&NodeEvent::Listening {
                peer_id: net.local_peer_id().to_string(),
                p2p: &p2p,
                api: listener.local_addr()?,
            })?;
        } else {
            println!("api listening on {}", listener.local_addr()?);
        }
        let api = tokio::spawn(api::serve(
            listener,
            ApiState {
                chain: chain.clone(),
                node_key: key.public(),
                network: net.clone(),
                relay: relay.clone(),
                sync: sync.clone(),
                reputation: reputation.clone(),
                devnet_file: args
                    .data_dir
                    .parent()
                    .map(|dir| dir.join(crate::devnet::DEVNET_FILE))
                    .filter(|file| file.exists()),
                external_addrs: config.external_addrs.clone(),
                metrics: metrics.clone(),
                shutdown: stop_rx.clone(),
            },
        ));
        let mut producer = tokio::spawn(produce(
            chain.clone(),
            relay.clone(),
            key,
            metrics.clone(),
            stop_rx,
        ));
        let load = (args.tps > 0).then(|| tokio::spawn(generate_load(relay.clone(), args.tps)));
        let status = tokio::spawn(status_lines(
            chain.clone(),
            net.clone(),
            sync.clone(),
            metrics.clone(),
        ));
        let propagation = tokio::spawn(observe_propagation(
            relay.subscribe(),
            chain.clone(),
            metrics.clone(),
        ));
        let progress = tokio::spawn(crate::progress::show_sync_progress(sync.watch()));

        let produced = tokio::select! {
            reason = stop => {
                tracing::info!(reason, "shutting down: a second Ctrl-C exits at once");
                None
            }
            r = &mut producer => Some(r),
        };
        tokio::spawn(exit_on_second_interrupt());
        // Ignoring the error: receivers gone means every task has ended already.
        let _ = stop_tx.send(true);
        let produced = match produced {
            Some(r) => r,
            None => producer.await,
        };
        status.abort();
        propagation.abort();
        progress.abort();
        if let Some(l) = load {
            l.abort();
        }
        match tokio::time::timeout(API_DRAIN_TIMEOUT, api).await {
            Ok(served) => served?.context("serving the API")?,
            Err(_) => tracing::warn!("API requests still open after the drain timeout: dropped"),
        }
        if sync.shutdown().await.is_ok() {
            let _ = sync_task.await;
        }
        if relay.shutdown().await.is_ok() {
            let _ = relay_task.await;
        }
        reports.abort();
        if reputation.shutdown().await.is_ok() {
            let _ = reputation_task.await;
        }
        if let Err(e) = net.shutdown().await {
            tracing::warn!(error = %e, "network already stopped");
        }
        if let Err(e) = net_task.await {
            tracing::warn!(error = %e, "network task ended abnormally");
        }
        produced??;
        let tip = chain.tip();
        if json {
            print_event(&NodeEvent::Stopped {
                best_hash: tip.hash,
                best_height: tip.height,
                transactions_included: metrics.transactions_included.get(),
            })?;
        } else {
            println!(
                "node stopped: tip {} at height {}, {} txs included by this node in this run",
                tip.hash,
                tip.height,
                metrics.transactions_included.get()
            );
        }
        anyhow::Ok(())
    })
}

/// What `playergold node --json` prints on stdout, one object per line, `event` first.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum NodeEvent<'a> {
    /// The chain is open.
    Started {
        /// The network the genesis names.
        network: &'a str,
        /// The genesis block hash.
        genesis_hash: BlockHash,
        /// The best block.
        best_hash: BlockHash,
        /// Its height.
        best_height: Height,
    },
    /// The network and the API are listening.
    Listening {
        /// The node's PeerId.
        peer_id: String,
        /// Its p2p addresses, each ending in `/p2p/<peer_id>`.
        p2p: &'a [String],
        /// The API address.
        api: std::net::SocketAddr,
    },
    /// The node has shut down cleanly.
    Stopped {
        /// The best block.
        best_hash: BlockHash,
        /// Its height.
        best_height: Height,
        /// Transactions in the blocks this node produced in this run.
        transactions_included: u64,
    },
}

fn print_event(event: &NodeEvent<'_>) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(event)?);
    Ok(())
}

/// Resolves when the node should stop: SIGINT, SIGTERM, or `seconds` elapsed. Returns why.
/// The handlers are installed before this returns, so no signal is lost.
fn stop_requested(seconds: Option<u64>) -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        let deadline = async {
            match seconds {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = deadline => "--seconds elapsed",
        }
    })
}

/// A second Ctrl-C during shutdown exits at once. Safe for the data: every redb commit is
/// durable when it returns.
async fn exit_on_second_interrupt() {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("second interrupt: exiting without waiting for a clean shutdown");
        std::process::exit(130);
    }
}

/// Produces a block in each of our slots on the current tip, until `stop` turns `true`.
async fn produce(
    chain: Arc<Blockchain>,
    relay: RelayHandle,
    key: Keypair,
    metrics: Arc<NodeMetrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let now = TimestampMs::now();
        let at = chain.next_production_time(&key, now);
        let sleep = async {
            match at {
                Some(at) => {
                    tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now.0))).await
                }
                // Not a validator: nothing to produce; idle until stopped.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            // An error means the sender is gone, which also means stop.
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        // Always `Some` here: without a slot the sleep never ends.
        let Some(at) = at else {
            continue;
        };
        let builder = chain.clone();
        let key = key.clone();
        let block =
            tokio::task::spawn_blocking(move || builder.build_block(&key, at, MAX_BLOCK_TXS))
                .await?;
        let txs = block.txs.len();
        // The relay imports the block (one durable commit) and pushes it to every peer.
        match relay.propagate_block(block).await {
            Ok(hash) => {
                metrics.blocks_produced.inc();
                metrics.transactions_included.inc_by(txs as u64);
                tracing::debug!(%hash, txs, "produced block");
            }
            Err(RelayError::Stopped) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "own block not imported"),
        }
    }
}

/// Submits `tps` signed transfers per second from a throw-away devnet key, through the relay.
async fn generate_load(relay: RelayHandle, tps: u32) {
    let sender = Keypair::generate();
    let mut nonce = 0u64;
    let mut tick = tokio::time::interval(LOAD_TICK);
    // Late ticks are not made up: a node too busy to keep its rate does not burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pacer = Pacer::new(tps, LOAD_TICK);
    loop {
        tick.tick().await;
        for _ in 0..pacer.due() {
            let tx = UnsignedTransaction {
                from: sender.public(),
                to: Address([0x11; 20]),
                amount: Amount(1),
                fee: Amount(1),
                nonce: Nonce(nonce),
                timestamp_ms: TimestampMs::now(),
            }
            .sign(&sender);
            nonce += 1;
            if let Err(e) = relay.submit_transaction(tx).await {
                tracing::debug!(error = %e, "load tx refused");
            }
        }
    }
}

/// How many transactions each load tick sends for a rate of `tps`, carrying the fraction a tick
/// owes: 2 tx/s is one transaction every fifth 100 ms tick, not one a tick (10 tx/s).
#[derive(Debug)]
struct Pacer {
    per_tick: f64,
    owed: f64,
}

impl Pacer {
    fn new(tps: u32, tick: Duration) -> Self {
        Pacer {
            per_tick: f64::from(tps) * tick.as_secs_f64(),
            owed: 0.0,
        }
    }

    /// Transactions due at this tick.
    fn due(&mut self) -> u64 {
        self.owed += self.per_tick;
        let due = self.owed.floor();
        self.owed -= due;
        // At most `tps` per tick (u32 range, a whole number): the cast is exact.
        due as u64
    }
}

/// Records the propagation delay of every new block and transaction the relay reports from a
/// peer (see [`crate::metrics`] for what the delay measures). Events are read in batches of up
/// to [`PROPAGATION_BATCH`]; the receive time is taken when each event is read.
async fn observe_propagation(
    mut events: broadcast::Receiver<RelayServiceEvent>,
    chain: Arc<Blockchain>,
    metrics: Arc<NodeMetrics>,
) {
    loop {
        let mut batch: Vec<(Item, TimestampMs)> = Vec::new();
        let mut next = events.recv().await;
        loop {
            match next {
                Ok(RelayServiceEvent::NewBlock {
                    hash,
                    from: Some(_),
                    at,
                }) => batch.push((Item::Block(hash), wall_clock(at))),
                Ok(RelayServiceEvent::NewTransaction {
                    id,
                    from: Some(_),
                    at,
                }) => batch.push((Item::Tx(id), wall_clock(at))),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "propagation delays not measured for some items");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            if batch.len() >= PROPAGATION_BATCH {
                break;
            }
            next = match events.try_recv() {
                Ok(event) => Ok(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
            };
        }
        if batch.is_empty() {
            continue;
        }
        let chain = chain.clone();
        let stamped = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .filter_map(|(item, seen)| Some((item.kind(), seen, item.timestamp(&chain)?)))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(stamped) = stamped else {
            return;
        };
        for (kind, seen, stamp) in stamped {
            let delay = i64::try_from(seen.0).unwrap_or(i64::MAX)
                - i64::try_from(stamp.0).unwrap_or(i64::MAX);
            metrics.observe_propagation(kind, delay);
        }
    }
}

/// A new item the relay reported.
#[derive(Debug, Clone, Copy)]
enum Item {
    Block(BlockHash),
    Tx(TxId),
}

impl Item {
    fn kind(self) -> ItemKind {
        match self {
            Item::Block(_) => ItemKind::Block,
            Item::Tx(_) => ItemKind::Tx,
        }
    }

    /// The item's own timestamp: the block header's, or the signed transaction's while it is
    /// still in the mempool (`None` once it left, or if the store cannot be read).
    fn timestamp(self, chain: &Blockchain) -> Option<TimestampMs> {
        match self {
            Item::Block(hash) => chain.header(&hash).ok()?.map(|h| h.timestamp_ms),
            Item::Tx(id) => chain.mempool_get(&id).map(|tx| tx.timestamp_ms),
        }
    }
}

/// The first 8 hex characters of a hash: enough to tell blocks apart in a log line.
fn short_hash(hash: &BlockHash) -> String {
    let mut hex = hash.to_string();
    hex.truncate(8);
    hex
}

/// Logs the node's state every [`STATUS_INTERVAL`]: peers in/out, best block (height and short
/// hash), sync state and target, network state, and bytes in/out over every transport.
async fn status_lines(
    chain: Arc<Blockchain>,
    net: playergold_net::NetworkHandle,
    sync: SyncHandle,
    metrics: Arc<NodeMetrics>,
) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    // The first tick is immediate: skip it, the start-up line already said where we are.
    tick.tick().await;
    let started = Instant::now();
    loop {
        tick.tick().await;
        let (tip, mempool) = match tokio::task::spawn_blocking({
            let chain = chain.clone();
            move || (chain.tip(), chain.mempool_len())
        })
        .await
        {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "reading the chain for the status line");
                continue;
            }
        };
        let peers = net.peers().await.unwrap_or_default();
        let progress = sync.progress();
        let inbound = peers
            .iter()
            .filter(|p| p.direction == playergold_net::Direction::Inbound)
            .count();
        let (bytes_in, bytes_out) = metrics.transport_bytes();
        tracing::info!(
            peers_in = inbound,
            peers_out = peers.len() - inbound,
            best_height = tip.height.0,
            best_hash = %short_hash(&tip.hash),
            sync = %progress.state,
            sync_target = progress.target_height.0,
            network_state = %sync.network_state(),
            bytes_in,
            bytes_out,
            mempool,
            blocks_produced = metrics.blocks_produced.get(),
            txs_included = metrics.transactions_included.get(),
            uptime_s = started.elapsed().as_secs(),
            "status"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_pacer_keeps_fractional_rates() {
        for (tps, ticks, want) in [
            (2, 50, 10),
            (3, 100, 30),
            (100, 10, 100),
            (0, 10, 0),
            (1, 9, 0),
        ] {
            let mut pacer = Pacer::new(tps, LOAD_TICK);
            let sent: u64 = (0..ticks).map(|_| pacer.due()).sum();
            assert_eq!(sent, want, "{tps} tx/s over {ticks} ticks");
        }
    }

    #[test]
    fn short_hashes_are_the_first_eight_hex_chars() {
        let hash: BlockHash = "ab".repeat(32).parse().expect("64 hex chars");
        assert_eq!(short_hash(&hash), "abababab");
    }
}
