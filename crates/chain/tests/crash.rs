//! Crash safety: a child process imports blocks (each a durable redb transaction) and reports
//! every height it committed; the parent kills it with SIGKILL at random moments, reopens the
//! store and checks it is consistent and holds every block reported committed. Repeated over
//! several kills on the same database.
//!
//! A plain `main` (harness = false) because the same binary is also the child.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_primitives::{
    Address, Amount, Block, Genesis, Height, Keypair, Nonce, TimestampMs, UnsignedTransaction,
};

const CHILD_ENV: &str = "PLAYERGOLD_CRASH_CHILD_DB";
/// Kills per run; each kill lands at a different moment of an import.
const KILLS: usize = 8;
/// Transactions per block: enough that a commit takes a while and kills land inside one.
const TXS_PER_BLOCK: u64 = 200;

fn genesis() -> (Keypair, Genesis) {
    let key = Keypair::from_secret(&[42; 32]);
    let genesis = Genesis::devnet(
        "crashnet",
        vec![key.public()],
        TimestampMs(1_600_000_000_000),
    )
    .expect("valid genesis");
    (key, genesis)
}

fn open(path: &Path) -> Blockchain {
    let (_, genesis) = genesis();
    let consensus = Arc::new(ProofOfAuthority::from_genesis(&genesis));
    Blockchain::open(path, genesis, consensus, ChainConfig::default()).expect("open store")
}

/// Child: import blocks forever on top of whatever is stored, printing each committed height.
fn child(path: &Path) {
    let (key, _) = genesis();
    let chain = open(path);
    let sender = Keypair::from_secret(&[7; 32]);
    loop {
        let tip = chain.tip();
        let parent = chain.header(&tip.hash).expect("store").expect("tip header");
        let height = Height(tip.height.0 + 1);
        let txs = (0..TXS_PER_BLOCK)
            .map(|i| {
                UnsignedTransaction {
                    from: sender.public(),
                    to: Address([1; 20]),
                    amount: Amount(1),
                    fee: Amount(1),
                    nonce: Nonce(height.0 * TXS_PER_BLOCK + i),
                    timestamp_ms: TimestampMs(0),
                }
                .sign(&sender)
            })
            .collect();
        let ts = TimestampMs(parent.timestamp_ms.0 + 1_000);
        let block = Block::build(&key, tip.hash, height, ts, txs);
        chain
            .import_block(block, TimestampMs::now())
            .expect("import");
        println!("committed {} {}", height.0, chain.tip().hash);
    }
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("chain.redb");
    let exe = std::env::current_exe().expect("own path");
    let mut last_committed = 0u64;
    let mut failed = 0;
    for round in 0..KILLS {
        let mut proc = Command::new(&exe)
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = proc.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a few blocks, then kill it at a moment that varies per round.
        let target = 3 + round as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0u64;
        while seen < target && Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) => {
                    let h: u64 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|h| h.parse().ok())
                        .expect("committed line");
                    last_committed = h;
                    seen += 1;
                }
                _ => break,
            }
        }
        // A kill between 0 and ~20 ms into the next import.
        std::thread::sleep(Duration::from_micros(2_500 * round as u64));
        // std sends SIGKILL: the child gets no chance to clean up, as in a power cut.
        proc.kill().expect("kill child");
        // Heights printed before the kill are committed; drain what was already printed.
        for line in lines.map_while(Result::ok) {
            if let Some(h) = line.split_whitespace().nth(1).and_then(|h| h.parse().ok()) {
                last_committed = h;
            }
        }
        let _ = proc.wait();

        let chain = open(&db);
        let height = match chain.store().verify_consistency() {
            Ok(h) => h,
            Err(e) => {
                println!("round {round}: inconsistent store after kill: {e}");
                failed += 1;
                continue;
            }
        };
        if height.0 < last_committed {
            println!(
                "round {round}: reported height {last_committed} committed, store has {height}"
            );
            failed += 1;
        } else {
            println!(
                "round {round}: killed after height {last_committed}, reopened consistent at {height}"
            );
        }
    }
    let passed = KILLS - failed;
    println!("crash test: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
