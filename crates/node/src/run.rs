//! `playergold node`: lock the data dir, open the chain, serve the API, produce in our slots,
//! optionally generate load, report, and shut down cleanly on SIGINT/SIGTERM.
//!
//! ```text
//!  signal / --seconds ──► stop (watch) ──► producer finishes its block and returns
//!                                    ├──► API stops accepting, drains (bounded), /health 503
//!                                    └──► load and status tasks end; chain and lock dropped
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, Genesis, Keypair, MAX_BLOCK_TXS, Nonce, TimestampMs, UnsignedTransaction,
};
use playergold_protocol::relay::PropagationConfig;
use playergold_protocol::reputation::{Reason, ReputationConfig};
use playergold_services::{
    RelayError, RelayHandle, RelayService, RelayServiceEvent, ReputationHandle, ReputationService,
    SyncEvent, SyncHandle, SyncService, SyncServiceConfig,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::api::{self, ApiState};
use crate::config::ConfigArgs;
use crate::lock::DataDirLock;
use crate::metrics::NodeMetrics;
use crate::{CHAIN_FILE, GENESIS_FILE, NODE_KEY_FILE, keyfile, network};

/// How often the status line is logged.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the load generator submits a batch.
const LOAD_TICK: Duration = Duration::from_millis(100);
/// How long API requests in flight may take to finish once shutdown starts.
const API_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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

pub(crate) fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.dev {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    }
    // Held until this function returns, after the runtime and the chain are gone.
    let _lock = DataDirLock::acquire(&args.data_dir)?;
    if args.dev && !args.data_dir.join(NODE_KEY_FILE).exists() {
        crate::init(&args.data_dir, "devnet", 1_000)?;
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
        ChainConfig::default(),
    )?);
    println!(
        "node started: network {} genesis {} tip {} at height {}",
        genesis.network,
        chain.genesis_hash(),
        chain.tip().hash,
        chain.tip().height
    );
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
        println!("peer id {}", net.local_peer_id());
        for addr in net.listen_addrs().await? {
            println!("p2p listening on {addr}/p2p/{}", net.local_peer_id());
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
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = stop_requested(args.seconds)?;
        let listener = api::bind(config.api).await?;
        println!("api listening on {}", listener.local_addr()?);
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
        println!(
            "node stopped: tip {} at height {}, {} txs included by this node in this run",
            tip.hash,
            tip.height,
            metrics.transactions_included.get()
        );
        anyhow::Ok(())
    })
}

/// Feeds what the relay and sync saw peers do into their reputation.
async fn forward_reports(
    mut relay: broadcast::Receiver<RelayServiceEvent>,
    mut sync: broadcast::Receiver<SyncEvent>,
    reputation: ReputationHandle,
) {
    loop {
        let report = tokio::select! {
            event = relay.recv() => match event {
                Ok(RelayServiceEvent::Offence { peer, reason }) => Some((peer, reason)),
                Ok(RelayServiceEvent::Delivered { peer }) => Some((peer, Reason::Delivered)),
                Ok(_) => None,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "reputation fell behind the relay's reports");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = sync.recv() => match event {
                Ok(SyncEvent::Penalty { peer, reason }) => Some((peer, reason)),
                Ok(_) => None,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "reputation fell behind sync's reports");
                    None
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if let Some((peer, reason)) = report
            && reputation.report(peer, reason).await.is_err()
        {
            return;
        }
    }
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
    let per_tick = (tps as u64 * LOAD_TICK.as_millis() as u64 / 1_000).max(1);
    let mut nonce = 0u64;
    let mut tick = tokio::time::interval(LOAD_TICK);
    loop {
        tick.tick().await;
        for _ in 0..per_tick {
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

/// Logs the node's state every [`STATUS_INTERVAL`].
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
        tracing::info!(
            peers_in = inbound,
            peers_out = peers.len() - inbound,
            sync = %progress.state,
            sync_target = progress.target_height.0,
            network_state = %sync.network_state(),
            best_height = tip.height.0,
            best_hash = %tip.hash,
            mempool,
            blocks_produced = metrics.blocks_produced.get(),
            txs_included = metrics.transactions_included.get(),
            uptime_s = started.elapsed().as_secs(),
            "status"
        );
    }
}
