//! Single-node ingest: how many signed transactions per second one relay node accepts from eight
//! load peers over real TLS, next to the raw ed25519 batch-verify rate of the same signatures.
//!
//! `cargo bench -p playergold-services --bench ingest [-- --peers N --txs N --seconds S]`
//!
//! One node (relay service over a fresh chain) and `--peers` raw load peers on 127.0.0.0/8 over
//! QUIC, each sending a salt in its hello as our nodes do. Each load peer opens its relay stream
//! to the node and writes its share of `--txs` (default 120,000) pre-signed transactions in
//! batches of 100 as fast as flow control lets it, while draining the node's stream to it (the
//! node announces what it accepts by short id; relayed transactions are not pushed). "accepted"
//! counts transactions the node took into its mempool, from the first byte sent to the last one
//! accepted. The node checks signatures on each peer's reader as frames arrive
//! (`Blockchain::preverify`), so the checks of different peers run on every core, and the one
//! task that submits them finds them done.
//!
//! "raw batch (1 core)" is `verify_batch` over the same signatures in chunks of 100,
//! single-threaded, in this process: the issue's baseline (goal: accepted >= 0.7x). "raw batch
//! (all cores)" runs the same chunks on every core, for an honest view of what parallel checking
//! buys; "raw single" is one single (ZIP-215) check per signature (the same rule; the mempool
//! batches, and checks one by one only a batch that fails). The load peers share the same cores.
//! Bounded by `--seconds` (default 60).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::Stream;
use playergold_chain::{Blockchain, ChainConfig, MempoolConfig, ProofOfAuthority};
use playergold_net::framing::{read_frame, write_frame};
use playergold_net::testnet::{TEST_NETWORK, TestNode, node_ip, test_config};
use playergold_net::{NetworkConfig, NetworkName};
use playergold_primitives::codec;
use playergold_primitives::{
    Address, Amount, Genesis, Keypair, Nonce, PublicKey, Signature, TimestampMs, Transaction,
    UnsignedTransaction, verify_batch,
};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{PropagationConfig, RelayMessage, TxSalt};
use playergold_services::relay::{MAX_FRAME_SIZE, RelayHello, relay_protocol};
use playergold_services::{RelayHandle, RelayService};

/// Transactions per frame: the engine's default batch size.
const BATCH: usize = 100;
/// Distinct signing keys (realistic: batch verification gains nothing from repeated keys).
const SENDERS: usize = 1_000;
const GENESIS_MS: u64 = 1_600_000_000_000;

/// One chunk's signatures, ready for `verify_batch`: messages, signatures, keys.
type RawBatch = (Vec<[u8; 48]>, Vec<Signature>, Vec<PublicKey>);

struct Args {
    peers: usize,
    txs: usize,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        peers: 8,
        txs: 120_000,
        seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--peers" => args.peers = value().map_or(args.peers, |v| (v as usize).clamp(1, 64)),
            "--txs" => args.txs = value().map_or(args.txs, |v| v as usize),
            "--seconds" => args.seconds = value().unwrap_or(args.seconds),
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    args
}

fn make_txs(n: usize) -> Vec<Transaction> {
    let senders: Vec<Keypair> = (0..SENDERS)
        .map(|i| {
            let mut seed = [5u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Keypair::from_secret(&seed)
        })
        .collect();
    (0..n)
        .map(|i| {
            let key = &senders[i % SENDERS];
            UnsignedTransaction {
                from: key.public(),
                to: Address([9; 20]),
                amount: Amount(1),
                fee: Amount(1 + (i % 7) as u64),
                nonce: Nonce((i / SENDERS) as u64),
                timestamp_ms: TimestampMs(GENESIS_MS),
            }
            .sign(key)
        })
        .collect()
}

/// Signatures per second of `verify_batch` over `txs` in chunks of [`BATCH`] on one core and on
/// every core, and of one single verification each (one core).
fn raw_rates(txs: &[Transaction]) -> (f64, f64, f64) {
    let prepared: Vec<RawBatch> = txs
        .chunks(BATCH)
        .map(|c| {
            (
                c.iter().map(Transaction::signing_message).collect(),
                c.iter().map(|t| t.signature).collect(),
                c.iter().map(|t| t.from).collect(),
            )
        })
        .collect();
    let start = Instant::now();
    for (msgs, sigs, keys) in &prepared {
        let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
        verify_batch(&refs, sigs, keys).expect("valid signatures");
    }
    let batch = txs.len() as f64 / start.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|scope| {
        for share in prepared.chunks(prepared.len().div_ceil(cores)) {
            scope.spawn(move || {
                for (msgs, sigs, keys) in share {
                    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
                    verify_batch(&refs, sigs, keys).expect("valid signatures");
                }
            });
        }
    });
    let batch_all = txs.len() as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for t in txs {
        t.verify().expect("valid signature");
    }
    let single = txs.len() as f64 / start.elapsed().as_secs_f64();
    (batch, batch_all, single)
}

/// Test network settings with only our own connections (no outbound target, no DHT).
fn config(index: u8) -> NetworkConfig {
    let mut cfg = test_config(node_ip(index));
    cfg.min_peers = 0;
    cfg.dht = false;
    cfg.ai_peer_slots = 0;
    cfg
}

struct Node {
    net: TestNode,
    chain: Arc<Blockchain>,
    relay: RelayHandle,
}

async fn start_node(genesis: &Genesis, dir: &std::path::Path) -> Node {
    let net = TestNode::spawn_fresh(config(0))
        .await
        .expect("network starts");
    let chain = Arc::new(
        Blockchain::open(
            &dir.join("chain"),
            genesis.clone(),
            Arc::new(ProofOfAuthority::from_genesis(genesis)),
            ChainConfig {
                // Room for every transaction of the run: eviction is not what is measured.
                mempool: MempoolConfig {
                    max_txs: 10_000_000,
                    max_bytes: 4 * 1024 * 1024 * 1024,
                },
                ..ChainConfig::default()
            },
        )
        .expect("open chain"),
    );
    let (relay, _task) = RelayService::start(
        net.handle.clone(),
        chain.clone(),
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .expect("relay starts");
    Node { net, chain, relay }
}

/// A load peer: connected, hello sent both ways, our stream to write on.
async fn start_load_peer(index: u8, node: &Node, hello: &[u8]) -> (TestNode, Stream) {
    let net = TestNode::spawn_fresh(config(index))
        .await
        .expect("network starts");
    let protocol =
        relay_protocol(&NetworkName::new(TEST_NETWORK).expect("name")).expect("protocol");
    let mut control = net.handle.streams();
    let mut incoming = control.accept(protocol.clone()).expect("accept");
    let target = net
        .handle
        .connect(node.net.dial_addr())
        .await
        .expect("connect");
    let mut ours = control
        .open_stream(target, protocol)
        .await
        .expect("open stream");
    write_frame(&mut ours, hello, MAX_FRAME_SIZE)
        .await
        .expect("hello");
    let (_, mut theirs) = tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("the node opens its stream")
        .expect("incoming");
    // Drain what the node relays to us, for the whole run.
    tokio::spawn(async move {
        let _keep = incoming;
        while read_frame(&mut theirs, MAX_FRAME_SIZE).await.is_ok() {}
    });
    (net, ours)
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let validator = Keypair::from_secret(&[1; 32]);
    let genesis = Genesis::devnet(
        TEST_NETWORK,
        vec![validator.public()],
        TimestampMs(GENESIS_MS),
    )
    .expect("genesis");
    let dir = tempfile::tempdir().expect("temp dir");
    let total = args.txs - args.txs % (args.peers * BATCH);
    println!(
        "ingest: {} load peers, {total} transactions, {} cores",
        args.peers,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let txs = make_txs(total);
    let (raw_batch, raw_batch_all, raw_single) = raw_rates(&txs);

    let node = start_node(&genesis, dir.path()).await;
    let mut peers = Vec::new();
    for i in 0..args.peers {
        // As every PlayerGold node does, each load peer sends a salt: the node announces to it
        // by 4-byte short ids.
        let hello = codec::encode(&RelayHello {
            genesis: genesis.hash(),
            capabilities: Capabilities::NONE,
            tx_salt: Some(TxSalt([i as u8 + 1; 16])),
        });
        peers.push(start_load_peer(1 + i as u8, &node, &hello).await);
    }
    let per_peer = total / args.peers;
    let frames: Vec<Vec<Vec<u8>>> = txs
        .chunks(per_peer)
        .map(|share| {
            share
                .chunks(BATCH)
                .map(|c| codec::encode(&RelayMessage::Transactions(c.to_vec())))
                .collect()
        })
        .collect();

    let deadline = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut writers = Vec::new();
    for ((net, mut stream), frames) in peers.into_iter().zip(frames) {
        writers.push(tokio::spawn(async move {
            for f in &frames {
                if write_frame(&mut stream, f, MAX_FRAME_SIZE).await.is_err() {
                    break;
                }
            }
            (net, stream)
        }));
    }
    // Poll the node's counter: a benchmark may look at the clock; tests may not.
    let mut accepted = 0;
    while start.elapsed() < deadline {
        accepted = node.chain.mempool_len();
        if accepted >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = accepted as f64 / elapsed;
    let m = node.relay.metrics().await.expect("metrics");

    println!("{:<34} {:>12}", "", "tx/s");
    println!(
        "{:<34} {:>12.0}",
        "raw ed25519 batch verify (1 core)", raw_batch
    );
    println!(
        "{:<34} {:>12.0}",
        "raw ed25519 batch verify (all cores)", raw_batch_all
    );
    println!(
        "{:<34} {:>12.0}",
        "raw ed25519 single verify (1 core)", raw_single
    );
    println!(
        "{:<34} {:>12.0}   ({accepted}/{total} in {elapsed:.2} s)",
        "accepted by the relay node", rate
    );
    println!(
        "ratio accepted / raw batch (1 core): {:.2} (goal >= 0.70); / raw batch (all cores): {:.2}",
        rate / raw_batch,
        rate / raw_batch_all,
    );
    println!(
        "relayed out: {} tx pushes, {} bytes",
        m.engine.tx.sent,
        m.sent.total().bytes
    );
    if accepted < total {
        println!("stopped at the {}-second bound", args.seconds);
    }
    for w in writers {
        if let Ok((net, _stream)) = w.await {
            net.stop().await;
        }
    }
    let _ = node.relay.shutdown().await;
    node.net.stop().await;
}
