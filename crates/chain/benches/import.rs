//! Block import throughput next to raw ed25519 batch verification of the same signatures.
//!
//! `cargo bench -p playergold-chain --bench import [-- --blocks N --txs N --rounds N]`
//!
//! Both columns run single-threaded in the same process on the same blocks: "raw" is
//! `verify_batch` over each block's 1 + txs signatures with messages precomputed; "import" is
//! `Blockchain::import_block` (hashing, merkle root, consensus, duplicate check against the tx
//! index, batched signatures, one durable redb commit per block) into a fresh database.
//! "batched import" is the same through `import_blocks`, `--batch` blocks per durable commit, as
//! sync imports downloaded blocks. Prints a table; the goal is import >= 0.8x raw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, Block, Genesis, Height, Keypair, Nonce, PublicKey, Signature, TimestampMs,
    UnsignedTransaction, verify_batch,
};

/// One block's signatures, ready for `verify_batch`: messages, signatures, keys.
type RawBatch = (Vec<[u8; 48]>, Vec<Signature>, Vec<PublicKey>);

struct Args {
    blocks: u64,
    txs: u64,
    rounds: usize,
    batch: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        blocks: 20,
        txs: 1_000,
        rounds: 3,
        batch: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match a.as_str() {
            "--blocks" => args.blocks = value().unwrap_or(args.blocks),
            "--txs" => args.txs = value().unwrap_or(args.txs),
            "--rounds" => args.rounds = value().map(|v| v as usize).unwrap_or(args.rounds),
            "--batch" => args.batch = value().map(|v| v.max(1) as usize).unwrap_or(args.batch),
            // cargo bench passes --bench; ignore anything else.
            _ => {}
        }
    }
    args
}

fn make_blocks(key: &Keypair, genesis: &Genesis, n: u64, txs: u64) -> Vec<Block> {
    let senders: Vec<Keypair> = (0..64u8).map(|i| Keypair::from_secret(&[i; 32])).collect();
    let mut parent = genesis.block().header;
    let mut out = Vec::new();
    for h in 1..=n {
        let block_txs = (0..txs)
            .map(|i| {
                let s = &senders[(i % 64) as usize];
                UnsignedTransaction {
                    from: s.public(),
                    to: Address([7; 20]),
                    amount: Amount(1),
                    fee: Amount(1 + i % 10),
                    nonce: Nonce(h * txs + i),
                    timestamp_ms: genesis.timestamp_ms,
                }
                .sign(s)
            })
            .collect();
        let ts = TimestampMs(parent.timestamp_ms.0 + genesis.slot_duration_ms);
        let block = Block::build(key, parent.hash(), Height(h), ts, block_txs);
        parent = block.header.clone();
        out.push(block);
    }
    out
}

fn main() {
    let args = parse_args();
    let key = Keypair::from_secret(&[1; 32]);
    // Genesis far enough in the past that every block's slot is before "now".
    let start = TimestampMs::now().0 - (args.blocks + 10) * 1_000;
    let genesis =
        Genesis::devnet("bench", vec![key.public()], TimestampMs(start)).expect("valid genesis");
    eprintln!("signing {} blocks of {} txs...", args.blocks, args.txs);
    let blocks = make_blocks(&key, &genesis, args.blocks, args.txs);
    let total_txs = args.blocks * args.txs;

    // Precomputed inputs for the raw column.
    let raw_inputs: Vec<RawBatch> = blocks
        .iter()
        .map(|b| {
            let mut msgs = vec![b.header.signing_message()];
            let mut sigs = vec![b.header.signature];
            let mut keys = vec![b.header.producer];
            for t in &b.txs {
                msgs.push(t.signing_message());
                sigs.push(t.signature);
                keys.push(t.from);
            }
            (msgs, sigs, keys)
        })
        .collect();

    let mut raw_best = Duration::MAX;
    let mut import_best = Duration::MAX;
    let mut batch_best = Duration::MAX;
    for round in 0..args.rounds {
        let t = Instant::now();
        for (msgs, sigs, keys) in &raw_inputs {
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
            verify_batch(&refs, sigs, keys).expect("valid signatures");
        }
        raw_best = raw_best.min(t.elapsed());

        let dir = tempfile::tempdir().expect("temp dir");
        let open = |name: &str| {
            Blockchain::open(
                &dir.path().join(name),
                genesis.clone(),
                Arc::new(ProofOfAuthority::from_genesis(&genesis)),
                ChainConfig::default(),
            )
            .expect("open store")
        };
        let now = TimestampMs::now();

        let chain = open("single.redb");
        let copies = blocks.clone();
        let t = Instant::now();
        for b in copies {
            chain.import_block(b, now).expect("valid block");
        }
        let single = t.elapsed();
        assert_eq!(chain.tip().height, Height(args.blocks));
        import_best = import_best.min(single);

        let chain = open("batched.redb");
        let mut copies = blocks.clone();
        let t = Instant::now();
        while !copies.is_empty() {
            let rest = copies.split_off(copies.len().min(args.batch));
            let result = chain.import_blocks(std::mem::replace(&mut copies, rest), now);
            assert!(result.error.is_none(), "{:?}", result.error);
        }
        let batched = t.elapsed();
        assert_eq!(chain.tip().height, Height(args.blocks));
        batch_best = batch_best.min(batched);
        eprintln!(
            "round {round}: raw {:.1} ms, import {:.1} ms, batched import {:.1} ms",
            raw_best.as_secs_f64() * 1e3,
            single.as_secs_f64() * 1e3,
            batched.as_secs_f64() * 1e3,
        );
    }
    let raw_rate = total_txs as f64 / raw_best.as_secs_f64();
    let import_rate = total_txs as f64 / import_best.as_secs_f64();
    let batch_rate = total_txs as f64 / batch_best.as_secs_f64();
    println!();
    println!(
        "block import, {} blocks x {} txs, best of {} rounds, 1 thread",
        args.blocks, args.txs, args.rounds
    );
    println!("| measurement                      |        tx/s |");
    println!("|----------------------------------|-------------|");
    println!("| raw ed25519 batch verify         | {raw_rate:>11.0} |");
    println!("| import (validate + durable store)| {import_rate:>11.0} |");
    println!(
        "| ratio import / raw (goal >= 0.8) | {:>11.2} |",
        import_rate / raw_rate
    );
    println!(
        "| batched, {:>3} blocks per commit   | {batch_rate:>11.0} |",
        args.batch
    );
    println!(
        "| ratio batched / raw (goal >= 0.8)| {:>11.2} |",
        batch_rate / raw_rate
    );
}
