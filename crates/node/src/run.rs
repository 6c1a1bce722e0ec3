//! `playergold node`: open the chain, produce in our slots, optionally generate load, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ImportOutcome, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, Genesis, Keypair, MAX_BLOCK_TXS, Nonce, TimestampMs, UnsignedTransaction,
};

use crate::{CHAIN_FILE, GENESIS_FILE, NODE_KEY_FILE, keyfile};

/// How often the status line is printed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the load generator submits a batch.
const LOAD_TICK: Duration = Duration::from_millis(100);

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
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
}

pub(crate) fn run(args: NodeArgs) -> anyhow::Result<()> {
    if args.dev && !args.data_dir.join(NODE_KEY_FILE).exists() {
        crate::init(&args.data_dir, "devnet", 1_000)?;
    }
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let deadline = args
            .seconds
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let included = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce(chain.clone(), key, included.clone()));
        let load = (args.tps > 0).then(|| tokio::spawn(generate_load(chain.clone(), args.tps)));
        let status = tokio::spawn(status_lines(chain.clone()));
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::select! {
            _ = stop => {}
            r = producer => r??,
        }
        status.abort();
        if let Some(l) = load {
            l.abort();
        }
        let tip = chain.tip();
        println!(
            "node stopped: tip {} at height {}, {} txs included by this node in this run",
            tip.hash,
            tip.height,
            included.load(Ordering::Relaxed)
        );
        anyhow::Ok(())
    })
}

/// Produces a block in each of our slots on the current tip.
async fn produce(
    chain: Arc<Blockchain>,
    key: Keypair,
    included: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        let now = TimestampMs::now();
        let Some(at) = chain.next_production_time(&key, now) else {
            // Not a validator: nothing to produce; idle until stopped.
            std::future::pending::<()>().await;
            return Ok(());
        };
        tokio::time::sleep(Duration::from_millis(at.0.saturating_sub(now.0))).await;
        let chain = chain.clone();
        let key = key.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let block = chain.build_block(&key, at, MAX_BLOCK_TXS);
            let txs = block.txs.len();
            chain
                .import_block(block, TimestampMs::now())
                .map(|o| (o, txs))
        })
        .await?;
        match outcome {
            Ok((ImportOutcome::Imported { .. }, txs)) => {
                included.fetch_add(txs as u64, Ordering::Relaxed);
                tracing::debug!(txs, "produced block");
            }
            Ok((other, _)) => tracing::warn!(?other, "own block not imported"),
            Err(e) if e.is_peer_fault() => tracing::warn!(error = %e, "own block refused"),
            Err(e) => return Err(e).context("storing our own block"),
        }
    }
}

/// Submits `tps` signed transfers per second from a throw-away devnet key.
async fn generate_load(chain: Arc<Blockchain>, tps: u32) {
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
            if let Err(e) = chain.submit_transaction(tx, TimestampMs::now()) {
                tracing::debug!(error = %e, "load tx refused");
            }
        }
    }
}

async fn status_lines(chain: Arc<Blockchain>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    let started = Instant::now();
    loop {
        tick.tick().await;
        let tip = chain.tip();
        println!(
            "status: height {} tip {} mempool {} uptime {}s",
            tip.height,
            tip.hash,
            chain.mempool_len(),
            started.elapsed().as_secs()
        );
    }
}
