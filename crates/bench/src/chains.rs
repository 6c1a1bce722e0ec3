//! Every node's chain, for both systems: one bench genesis (every node a validator), one redb
//! file per node under a scratch directory (tmpfs when there is one), the same chain settings.
//!
//! Our nodes validate, store and import what the relay brings them; so do the gossipsub nodes
//! when the baseline runs with node work ([`NodeWork`]): a delivered transaction enters the
//! node's mempool (signature checked), a delivered block is imported, on one thread per node as
//! our relay's owner does. Arrivals are recorded at delivery in both systems, before that
//! work, but on a shared CPU the work of nodes the item already reached slows those it has yet to
//! reach: with node work, both systems pay for it alike.
//!
//! ```text
//!  gossipsub delivery ──► recorder.arrived ──► work channel ──► node thread: mempool / import
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use playergold_chain::{Blockchain, ChainBackend, ChainConfig, ProofOfAuthority};
use playergold_primitives::{Block, Genesis, Keypair, TimestampMs, Transaction, codec};
use playergold_services::relay::{IMPORT_NICENESS, lower_current_thread_priority};
use tokio::sync::mpsc;

/// Network name of the bench chain (also part of every protocol id).
pub const BENCH_NETWORK: &str = "benchnet";

/// Slot length of the bench genesis: the shortest the chain allows, so a block can be produced
/// at any tick of the workload (every node is a validator; the slot's validator produces).
pub const SLOT_MS: u64 = playergold_primitives::MIN_SLOT_DURATION_MS;

/// Delivered items waiting for one gossipsub node's thread. Far more than arrive between two
/// of its turns; an item that finds it full is counted as dropped (`node_work_dropped`).
const WORK_CAPACITY: usize = 4_096;

/// The chains of one system's nodes.
#[derive(Debug)]
pub struct BenchChains {
    genesis: Genesis,
    consensus: Arc<ProofOfAuthority>,
    config: ChainConfig,
    /// Chain databases live here; removed on drop.
    dir: tempfile::TempDir,
}

impl BenchChains {
    /// A fresh genesis for `validators`, a minute back (the first block's slot is then well
    /// after the genesis slot).
    pub fn new(validators: &[Keypair], block_min_tx_age: Duration) -> Result<Self, String> {
        let genesis = Genesis {
            network: BENCH_NETWORK.to_owned(),
            timestamp_ms: TimestampMs(TimestampMs::now().0.saturating_sub(60_000)),
            validators: validators.iter().map(Keypair::public).collect(),
            slot_duration_ms: SLOT_MS,
        };
        Self::with_genesis(genesis, block_min_tx_age)
    }

    /// Chains on an existing genesis (the baseline's nodes import the blocks our run produced).
    pub fn with_genesis(genesis: Genesis, block_min_tx_age: Duration) -> Result<Self, String> {
        genesis.validate().map_err(|e| e.to_string())?;
        Ok(Self {
            consensus: Arc::new(ProofOfAuthority::from_genesis(&genesis)),
            genesis,
            config: ChainConfig {
                block_min_tx_age,
                ..ChainConfig::default()
            },
            dir: scratch_dir().map_err(|e| e.to_string())?,
        })
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Opens node `node`'s chain.
    pub fn open(&self, node: usize) -> Result<Arc<Blockchain>, String> {
        Blockchain::open(
            &self.dir.path().join(format!("node-{node}.redb")),
            self.genesis.clone(),
            self.consensus.clone(),
            self.config,
        )
        .map(Arc::new)
        .map_err(|e| e.to_string())
    }
}

/// Where the chain databases go: tmpfs when available, so redb's fsyncs cost what they would on
/// a server's write cache rather than this VM's disk.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("playergold-bench-")
            .tempdir_in(&shm)
    {
        return Ok(dir);
    }
    tempfile::Builder::new()
        .prefix("playergold-bench-")
        .tempdir()
}

/// What a gossipsub node's thread is given.
#[derive(Debug)]
pub enum Work {
    /// A delivered transaction's payload.
    Tx(Vec<u8>),
    /// A delivered block's payload.
    Block(Vec<u8>),
}

/// Counts of the baseline's node work, all nodes together.
#[derive(Debug, Default)]
pub struct WorkStats {
    txs_accepted: AtomicU64,
    txs_refused: AtomicU64,
    blocks_imported: AtomicU64,
    blocks_refused: AtomicU64,
    /// Wall time of the imports, µs.
    import_micros: AtomicU64,
    /// Wall time of the transaction submissions, µs.
    tx_micros: AtomicU64,
    dropped: AtomicU64,
}

impl WorkStats {
    /// `(name, value)` pairs for a report's notes.
    pub fn notes(&self) -> Vec<(String, f64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mean_ms = |micros: &AtomicU64, counts: [&AtomicU64; 2]| {
            get(micros) / 1_000.0 / (get(counts[0]) + get(counts[1])).max(1.0)
        };
        vec![
            (
                "node_work_block_import_ms_mean".into(),
                mean_ms(
                    &self.import_micros,
                    [&self.blocks_imported, &self.blocks_refused],
                ),
            ),
            (
                "node_work_tx_submit_ms_mean".into(),
                mean_ms(&self.tx_micros, [&self.txs_accepted, &self.txs_refused]),
            ),
            ("node_work_txs_accepted".into(), get(&self.txs_accepted)),
            ("node_work_txs_refused".into(), get(&self.txs_refused)),
            (
                "node_work_blocks_imported".into(),
                get(&self.blocks_imported),
            ),
            ("node_work_blocks_refused".into(), get(&self.blocks_refused)),
            ("node_work_dropped".into(), get(&self.dropped)),
        ]
    }
}

/// One gossipsub node's work: the sending side of its thread's channel.
#[derive(Debug, Clone)]
pub struct NodeWork {
    work: mpsc::Sender<Work>,
    stats: Arc<WorkStats>,
}

impl NodeWork {
    /// Starts the thread that feeds `chain` what the node is given (named `gs-work`, so a
    /// profile tells its CPU apart): one OS thread per node, as our relay's owner has, at the
    /// niceness our relay imports at ([`IMPORT_NICENESS`]): gossipsub relays before the node
    /// sees an item, so all of this thread's work is, like our imports, off the relay's path.
    /// It ends when every `NodeWork` of it is dropped.
    pub fn start(chain: Arc<Blockchain>, stats: Arc<WorkStats>) -> Result<Self, String> {
        let (work, mut rx) = mpsc::channel(WORK_CAPACITY);
        let counts = stats.clone();
        std::thread::Builder::new()
            .name("gs-work".into())
            .spawn(move || {
                if let Err(e) = lower_current_thread_priority(IMPORT_NICENESS) {
                    tracing::warn!(error = %e, "gossipsub's node work runs at normal priority");
                }
                while let Some(item) = rx.blocking_recv() {
                    do_work(&chain, &counts, item);
                }
            })
            .map_err(|e| format!("cannot start a node's work thread: {e}"))?;
        Ok(Self { work, stats })
    }

    /// Hands a delivered item to the node's thread.
    pub fn give(&self, item: Work) {
        if self.work.try_send(item).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn do_work(chain: &Blockchain, stats: &WorkStats, item: Work) {
    let started = std::time::Instant::now();
    let now = TimestampMs::now();
    let (done, accepted, refused, micros) = match item {
        Work::Tx(data) => (
            codec::decode::<Transaction>(&data)
                .is_ok_and(|tx| chain.submit_transaction(tx, now).is_ok()),
            &stats.txs_accepted,
            &stats.txs_refused,
            &stats.tx_micros,
        ),
        Work::Block(data) => (
            codec::decode::<Block>(&data).is_ok_and(|block| chain.import_block(block, now).is_ok()),
            &stats.blocks_imported,
            &stats.blocks_refused,
            &stats.import_micros,
        ),
    };
    if done { accepted } else { refused }.fetch_add(1, Ordering::Relaxed);
    let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    micros.fetch_add(elapsed, Ordering::Relaxed);
}
