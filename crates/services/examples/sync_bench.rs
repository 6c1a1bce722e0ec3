//! Sync catch-up benchmark: a fresh node fetches `--blocks` blocks carrying `--txs` transactions
//! each from `--peers` holders over loopback QUIC with TLS 1.3, next to a local import of the
//! same blocks read from one holder's store, in the same run.
//!
//! `cargo run --release -p playergold-services --example sync_bench -- [--blocks N] [--txs N]
//! [--peers N] [--serve-rate R] [--in-flight N] [--seconds S]`
//!
//! "local import" reads each block from a holder's chain database and imports it into a fresh
//! chain in batches of `LOCAL_BATCH` (one durable commit per batch, like sync). "sync" runs from
//! the first connection to the moment the joiner's tip is the holders' tip. `--serve-rate` is
//! each holder's per-peer request rate limit (default: the protocol's `SERVE_RATE_PER_SEC`);
//! with 16 blocks per request it caps what one holder serves one client. Bounded by
//! `--seconds` (default 300): on timeout the partial rate is reported.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use playergold_chain::{Blockchain, ChainBackend, ChainConfig, MempoolConfig, ProofOfAuthority};
use playergold_net::testnet::{TEST_NETWORK, TestNode, node_ip, test_config};
use playergold_primitives::{
    Address, Amount, Block, Genesis, Height, Keypair, Nonce, TimestampMs, Transaction,
    UnsignedTransaction,
};
use playergold_protocol::sync::{SERVE_BURST, SERVE_RATE_PER_SEC, SyncConfig};
use playergold_services::{SyncHandle, SyncService, SyncServiceConfig};

/// Slot length of the bench genesis.
const SLOT_MS: u64 = 1_000;
/// Genesis far enough back that every bench block's slot is in the past.
const GENESIS_MS: u64 = 1_500_000_000_000;
/// Blocks per local import batch (sync's batches are what `take_ready` hands out, up to its
/// window of 1,024).
const LOCAL_BATCH: usize = 512;
/// How often progress is printed.
const REPORT_EVERY: Duration = Duration::from_secs(5);

struct Args {
    blocks: usize,
    txs: usize,
    peers: usize,
    serve_rate: f64,
    in_flight: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        blocks: 100_000,
        txs: 4,
        peers: 4,
        serve_rate: SERVE_RATE_PER_SEC,
        in_flight: SyncConfig::default().max_in_flight_per_peer,
        seconds: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            // `cargo bench`-style harness flag.
            continue;
        }
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--blocks" => args.blocks = parse(&flag, &value),
            "--txs" => args.txs = parse(&flag, &value),
            "--peers" => args.peers = parse(&flag, &value),
            "--serve-rate" => args.serve_rate = parse(&flag, &value),
            "--in-flight" => args.in_flight = parse(&flag, &value),
            "--seconds" => args.seconds = parse(&flag, &value),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn parse<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad value {value:?} for {flag}"))
}

fn open(path: &Path, genesis: &Genesis) -> Arc<Blockchain> {
    let config = ChainConfig {
        mempool: MempoolConfig::default(),
        ..ChainConfig::default()
    };
    Arc::new(
        Blockchain::open(
            path,
            genesis.clone(),
            Arc::new(ProofOfAuthority::from_genesis(genesis)),
            config,
        )
        .expect("open chain"),
    )
}

/// `blocks` blocks on genesis, one per slot, each with `txs` transfers (signed in parallel).
fn build_line(genesis: &Genesis, validators: &[Keypair], blocks: usize, txs: usize) -> Vec<Block> {
    let sender = Keypair::from_secret(&[42; 32]);
    let total = blocks * txs;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = total.div_ceil(threads).max(1);
    let mut all: Vec<Transaction> = Vec::with_capacity(total);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..total)
            .step_by(chunk)
            .map(|start| {
                let sender = &sender;
                scope.spawn(move || {
                    (start..(start + chunk).min(total))
                        .map(|n| {
                            UnsignedTransaction {
                                from: sender.public(),
                                to: Address([9; 20]),
                                amount: Amount(1),
                                fee: Amount(1),
                                nonce: Nonce(n as u64),
                                timestamp_ms: TimestampMs(GENESIS_MS),
                            }
                            .sign(sender)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            all.extend(h.join().expect("signing thread"));
        }
    });
    let mut txs_left = all.into_iter();
    let mut parent = genesis.block();
    let mut line = Vec::with_capacity(blocks);
    for _ in 0..blocks {
        let slot = parent.header.timestamp_ms.0 / SLOT_MS + 1;
        let key = &validators[(slot % validators.len() as u64) as usize];
        let block = Block::build(
            key,
            parent.hash(),
            Height(parent.header.height.0 + 1),
            TimestampMs(slot * SLOT_MS),
            txs_left.by_ref().take(txs).collect(),
        );
        line.push(block.clone());
        parent = block;
    }
    line
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

struct Node {
    net: TestNode,
    sync: SyncHandle,
    task: tokio::task::JoinHandle<()>,
}

async fn spawn_node(index: u8, chain: Arc<Blockchain>, config: SyncServiceConfig) -> Node {
    let mut cfg = test_config(node_ip(index));
    cfg.min_peers = 0;
    cfg.dht = false;
    let net = TestNode::spawn_fresh(cfg).await.expect("network starts");
    let (sync, task) =
        SyncService::start(net.handle.clone(), chain, config, None).expect("sync starts");
    Node { net, sync, task }
}

impl Node {
    async fn stop(self) {
        let _ = self.sync.shutdown().await;
        let _ = self.task.await;
        self.net.stop().await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    let validators: Vec<Keypair> = (1..=3u8).map(|i| Keypair::from_secret(&[i; 32])).collect();
    let genesis = Genesis::devnet(
        TEST_NETWORK,
        validators.iter().map(Keypair::public).collect(),
        TimestampMs(GENESIS_MS),
    )
    .expect("valid genesis");
    println!(
        "sync bench: {} blocks x {} txs from {} peers (serve rate {}/s per peer, {} requests \
         in flight per peer)",
        args.blocks, args.txs, args.peers, args.serve_rate, args.in_flight
    );

    let t = Instant::now();
    let line = build_line(&genesis, &validators, args.blocks, args.txs);
    println!("built the blocks in {:.1?}", t.elapsed());
    let last = line.last().map(Block::hash).expect("at least one block");

    // One holder imports from memory; the others get a copy of its database.
    let holder0 = dir.path().join("holder0");
    let chain = open(&holder0, &genesis);
    let t = Instant::now();
    for chunk in line.chunks(LOCAL_BATCH) {
        let batch = chain.import_blocks(chunk.to_vec(), TimestampMs::now());
        assert!(batch.error.is_none(), "{:?}", batch.error);
    }
    println!(
        "holder import from memory: {:.0} blocks/s",
        rate(args.blocks, t.elapsed())
    );
    drop(line);

    // Local import of the same blocks from disk.
    let local = open(&dir.path().join("local"), &genesis);
    let t = Instant::now();
    let mut height = 1;
    while height <= args.blocks as u64 {
        let end = (height + LOCAL_BATCH as u64).min(args.blocks as u64 + 1);
        let blocks: Vec<Block> = (height..end)
            .map(|h| {
                let hash = chain.hash_at(Height(h)).expect("best chain");
                chain.block(&hash).expect("store").expect("stored block")
            })
            .collect();
        let batch = local.import_blocks(blocks, TimestampMs::now());
        assert!(batch.error.is_none(), "{:?}", batch.error);
        height = end;
    }
    let local_time = t.elapsed();
    let local_rate = rate(args.blocks, local_time);
    println!(
        "local import from disk: {:.0} blocks/s, {:.0} tx/s ({:.1?})",
        local_rate,
        rate(args.blocks * args.txs, local_time),
        local_time
    );
    drop(local);
    drop(chain);
    for i in 1..args.peers {
        std::fs::copy(&holder0, dir.path().join(format!("holder{i}"))).expect("copy db");
    }

    let config = SyncServiceConfig {
        serve_rate_per_sec: args.serve_rate,
        serve_burst: SERVE_BURST.max(args.serve_rate * 2.0),
        sync: SyncConfig {
            max_in_flight_per_peer: args.in_flight,
            ..SyncConfig::default()
        },
        ..SyncServiceConfig::default()
    };
    let mut holders = Vec::new();
    for i in 0..args.peers {
        let chain = open(&dir.path().join(format!("holder{i}")), &genesis);
        holders.push(spawn_node(200 + i as u8, chain, config.clone()).await);
    }
    let joiner_chain = open(&dir.path().join("joiner"), &genesis);
    let joiner = spawn_node(250, joiner_chain.clone(), config).await;
    let mut status = joiner.sync.watch();
    let started = Instant::now();
    for holder in &holders {
        joiner
            .net
            .handle
            .connect(holder.net.dial_addr())
            .await
            .expect("connect");
    }
    let deadline = started + Duration::from_secs(args.seconds);
    let mut next_report = started + REPORT_EVERY;
    let finished = loop {
        if joiner_chain.tip().hash == last {
            break true;
        }
        let now = Instant::now();
        if now >= deadline {
            break false;
        }
        if now >= next_report {
            let p = joiner.sync.progress();
            println!(
                "  {:>5.1}s: height {} / {} ({:.0} blocks/s now, {})",
                started.elapsed().as_secs_f64(),
                p.height.0,
                p.target_height.0,
                p.blocks_per_sec,
                p.state
            );
            next_report = now + REPORT_EVERY;
        }
        let wake = deadline.min(next_report);
        let _ = tokio::time::timeout_at(wake.into(), status.changed()).await;
    };
    let took = started.elapsed();
    let synced = joiner_chain.tip().height.0 as usize;
    let sync_rate = rate(synced, took);
    println!(
        "sync{}: {} blocks in {:.1?}: {:.0} blocks/s, {:.0} tx/s, {:.2}x local import",
        if finished { "" } else { " (timed out)" },
        synced,
        took,
        sync_rate,
        rate(synced * args.txs, took),
        sync_rate / local_rate
    );
    let m = joiner.sync.metrics().await.expect("metrics");
    println!(
        "joiner: {} requests, {} busy replies, {} stalls, {} import batches, {} MiB in",
        m.scheduler.requests,
        m.scheduler.busy,
        m.scheduler.stalls,
        m.import_batches,
        m.bytes_in / (1024 * 1024)
    );
    drop(joiner_chain);
    joiner.stop().await;
    for holder in holders {
        holder.stop().await;
    }
}
