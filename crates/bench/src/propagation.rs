//! The propagation bench: the same workload on the same overlay through our relay, then through
//! gossipsub, one system at a time (so neither competes with the other for this machine's CPUs).
//!
//! ```text
//!  RTT matrix ─► Overlay (seeded: regions, links, delays) ─► Dijkstra bounds per origin
//!                   │
//!  plan txs ────────┼─► ours:      OursNet   ◄─ txs at their offsets, blocks built live
//!                   │                 └─ records every injection (blocks included)
//!                   └─► gossipsub: GossipNet ◄─ the same injections replayed
//!                                      └─ delivered items ─► each node's chain (NodeWork)
//!  Recorder per phase (arrival per node) + byte counters ─► Report (JSON + table + goals)
//! ```
//!
//! Node work. Our nodes check, store and import what they relay; gossipsub's nodes, by default,
//! do the same with what they are delivered (mempool entry, block import; `chains::NodeWork`),
//! since here fifty nodes share two cores and one node's work delays the others' relaying.
//! `--gossip-relay-only` runs the bare baseline instead.
//!
//! Byte attribution. Ours: the relay service's frame counters per message kind (frame header
//! included): `Transactions`, `Announce`, `Request`, `NotFound` are transaction bytes;
//! `CompactBlock`, `BlockTxnsRequest`, `BlockTxns`, `Block` are block bytes. Gossipsub: all
//! bytes written to its streams during the workload (bandwidth transport, below nothing but
//! yamux and TLS, the same layer as our frames), split into each topic's message bytes
//! (gossipsub's own per-topic counters) plus the remainder (IHAVE/IWANT/IDONTWANT, GRAFT/PRUNE,
//! RPC framing), which is shared between the kinds in proportion to their number of messages,
//! since gossip control traffic is per message id. Our ping/identify bytes are not propagation
//! and are left out of ours; both systems' stream totals are printed as well.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use playergold_chain::ChainBackend;
use playergold_primitives::{Genesis, TimestampMs, Transaction, codec};
use playergold_protocol::relay::{CompactBlock, Fanout, PropagationConfig, RelayMessage};
use tokio::task::JoinSet;
use tokio::time::Instant;

use playergold_services::relay::MessageKind;

use crate::chains::{BenchChains, NodeWork, WorkStats};
use crate::gossip::{GossipError, GossipNet, Topic, payload_key};
use crate::hops;
use crate::ours::{OursError, OursNet};
use crate::overlay::Overlay;
use crate::recorder::{Kind, Outcome, Recorder, imported_key};
use crate::report::{Report, RunConfig, SystemReport};
use crate::rtt::{DEFAULT_RTT_FILE, RttError, RttMatrix};
use crate::stats::KindReport;
use crate::workload::{Injection, Item, block_ticks, plan_backlog, plan_transactions};

/// Most transactions per block: 250 transactions of ~130 bytes make a ~33 KB block, well inside
/// gossipsub's default 64 KiB message limit (`max_transmit_size`), and large enough that a
/// compact block (header + 5-byte short ids) shows its size ratio at a realistic block size.
pub const DEFAULT_MAX_BLOCK_TXS: usize = 250;

/// Default mempool backlog: with the default 20 s workload, blocks every 2 s of up to 250
/// transactions take 2,250; the backlog and the fresh transactions together fill them.
pub const DEFAULT_BACKLOG: usize = 2_000;

/// Longest wait for our relay to come up on every link.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a producer to have the previous block before it builds the next.
const PARENT_WAIT: Duration = Duration::from_secs(2);

/// Bench parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes per system.
    pub nodes: usize,
    /// Workload length.
    pub duration: Duration,
    /// Target links per node.
    pub degree: usize,
    /// Transactions per second, all nodes together.
    pub tx_rate: f64,
    /// Interval between blocks.
    pub block_interval: Duration,
    /// Most transactions per block.
    pub max_block_txs: usize,
    /// Transactions every mempool holds before the workload (see [`plan_backlog`]).
    pub backlog: usize,
    /// Seed of the overlay, regions and workload.
    pub seed: u64,
    /// The region RTT matrix.
    pub rtt_file: PathBuf,
    /// How long after the last injection items may still take to arrive.
    pub drain: Duration,
    /// Time from gossipsub's start to its workload: its first heartbeat (5 s by default) must
    /// have built the meshes.
    pub gossip_warmup: Duration,
    /// How many peers our relay pushes a transaction to in full (the rest get its id):
    /// `PropagationConfig::gossip_factor`.
    pub tx_fanout: Fanout,
    /// `PropagationConfig::announce_yield`.
    pub announce_yield: Duration,
    /// Whether gossipsub's nodes keep a chain as ours do: each delivered transaction enters the
    /// node's mempool, each delivered block is imported ([`NodeWork`]). Arrivals are recorded
    /// at delivery either way; on this shared CPU the work slows the nodes still relaying.
    pub gossip_node_work: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 50,
            duration: Duration::from_secs(20),
            degree: 8,
            tx_rate: 20.0,
            block_interval: Duration::from_secs(2),
            max_block_txs: DEFAULT_MAX_BLOCK_TXS,
            backlog: DEFAULT_BACKLOG,
            seed: 1,
            rtt_file: PathBuf::from(DEFAULT_RTT_FILE),
            drain: Duration::from_secs(10),
            gossip_warmup: Duration::from_secs(6),
            tx_fanout: PropagationConfig::default().gossip_factor,
            announce_yield: PropagationConfig::default().announce_yield,
            gossip_node_work: true,
        }
    }
}

impl Options {
    /// How long a transaction waits before a block takes it, in both systems' chains: half a
    /// block interval, as the node does.
    fn block_min_tx_age(&self) -> Duration {
        self.block_interval / 2
    }
}

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The RTT matrix.
    #[error(transparent)]
    Rtt(#[from] RttError),
    /// Bad parameters.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Our system failed.
    #[error(transparent)]
    Ours(#[from] OursError),
    /// Gossipsub failed.
    #[error(transparent)]
    Gossip(#[from] GossipError),
    /// The gossipsub nodes' chains could not be set up.
    #[error("gossipsub nodes' chains: {0}")]
    Chains(String),
}

/// Runs the bench and returns its report.
pub async fn run(opts: &Options) -> Result<Report, BenchError> {
    if opts.nodes < 2 || opts.nodes > crate::links::MAX_NODES {
        return Err(BenchError::Params(format!(
            "--nodes must be between 2 and {}",
            crate::links::MAX_NODES
        )));
    }
    if opts.degree == 0 || opts.tx_rate.is_nan() || opts.tx_rate < 0.0 || opts.duration.is_zero() {
        return Err(BenchError::Params(
            "degree, duration must be positive and the tx rate non-negative".into(),
        ));
    }
    let load_start = load_average();
    let rtt = RttMatrix::load(&opts.rtt_file)?;
    let overlay = Arc::new(Overlay::random(opts.nodes, opts.degree, &rtt, opts.seed));
    let bounds: Vec<Duration> = (0..overlay.len())
        .map(|i| overlay.bound(i).unwrap_or(Duration::MAX))
        .collect();
    let txs = plan_transactions(opts.nodes, opts.tx_rate, opts.duration, opts.seed);

    tracing::info!(
        nodes = opts.nodes,
        links = overlay.links().len(),
        "ours: starting"
    );
    // Both systems' mempools start with the very same backlog.
    let backlog = plan_backlog(opts.backlog, opts.seed);
    let (ours, injections, genesis) =
        run_ours(opts, overlay.clone(), txs, &backlog, &bounds).await?;
    tracing::info!("gossipsub: starting");
    let handover = GossipStart {
        injections: &injections,
        genesis,
        backlog,
    };
    let gossipsub = run_gossipsub(opts, overlay.clone(), handover, &bounds).await?;

    let config = RunConfig {
        nodes: opts.nodes,
        links: overlay.links().len(),
        mean_degree: 2.0 * overlay.links().len() as f64 / opts.nodes as f64,
        regions: rtt.len(),
        seconds: opts.duration.as_secs_f64(),
        tx_rate: opts.tx_rate,
        block_interval_ms: opts.block_interval.as_millis() as u64,
        max_block_txs: opts.max_block_txs,
        backlog: opts.backlog,
        seed: opts.seed,
        tx_fanout: format!("{:?}", opts.tx_fanout),
        announce_yield_ms: opts.announce_yield.as_millis() as u64,
        gossip_node_work: opts.gossip_node_work,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        load_average: (load_start, load_average()),
    };
    Ok(Report::new(config, ours, gossipsub))
}

/// Per-kind summaries of a phase's outcomes.
fn summarise(
    outcomes: &[Outcome],
    bounds: &[Duration],
    kind: Kind,
    bytes: u64,
    nodes: usize,
) -> KindReport {
    let items: Vec<(Option<Duration>, Duration, usize)> = outcomes
        .iter()
        .filter(|o| o.kind == kind)
        .map(|o| {
            (
                o.to_all,
                bounds.get(o.origin).copied().unwrap_or_default(),
                o.size,
            )
        })
        .collect();
    KindReport::summarise(&items, bytes, nodes)
}

async fn run_ours(
    opts: &Options,
    overlay: Arc<Overlay>,
    txs: Vec<Injection>,
    backlog: &[Transaction],
    bounds: &[Duration],
) -> Result<(SystemReport, Vec<Injection>, Genesis), BenchError> {
    let recorder = Recorder::new(opts.nodes);
    let net = OursNet::start(
        overlay.clone(),
        recorder.clone(),
        opts.seed,
        backlog,
        READY_TIMEOUT,
        &PropagationConfig {
            gossip_factor: opts.tx_fanout,
            announce_yield: opts.announce_yield,
            ..PropagationConfig::default()
        },
        opts.block_min_tx_age(),
    )
    .await?;
    let net = Arc::new(net);
    let before = net.bytes().await?;
    let cpu = CpuClock::start();
    let start = Instant::now();

    // Blocks: one task, ticks in order (each builds on the one before).
    let producer = {
        let net = net.clone();
        let recorder = recorder.clone();
        let ticks = block_ticks(opts.block_interval, opts.duration);
        let max_txs = opts.max_block_txs;
        tokio::spawn(async move {
            let mut produced = Vec::new();
            let mut last = None;
            let mut stale = 0u64;
            let mut errors = 0u64;
            for tick in ticks {
                tokio::time::sleep_until(start + tick).await;
                let now = TimestampMs::now();
                let node = net.producer_at(now);
                if let Some(last) = last {
                    let deadline = Instant::now() + PARENT_WAIT;
                    while net.tip(node) != Some(last) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if net.tip(node) != Some(last) {
                        stale += 1;
                    }
                }
                // The slot may have moved on while we waited: re-read the clock and producer.
                let now = TimestampMs::now();
                let node = net.producer_at(now);
                let Some(block) = net.build_block(node, now, max_txs) else {
                    errors += 1;
                    continue;
                };
                let hash = block.hash();
                let size = block_len(&block);
                let at = start.elapsed();
                recorder.register(hash.0, Kind::Block, node, size);
                recorder.register(imported_key(&hash.0), Kind::BlockImported, node, size);
                if net.propagate_block(node, block.clone()).await.is_err() {
                    errors += 1;
                }
                last = Some(hash);
                produced.push(Injection {
                    at,
                    node,
                    item: Item::Block(block),
                });
            }
            (produced, stale, errors)
        })
    };

    // Transactions: each injection its own task, so a busy node never delays the schedule.
    let mut tasks = JoinSet::new();
    for inj in &txs {
        tokio::time::sleep_until(start + inj.at).await;
        let Item::Tx(tx) = &inj.item else { continue };
        let (net, recorder, tx, node) = (net.clone(), recorder.clone(), tx.clone(), inj.node);
        tasks.spawn(async move {
            recorder.register(tx.id().0, Kind::Tx, node, tx.encoded_len());
            net.submit_transaction(node, tx).await.is_err()
        });
    }
    let mut tx_errors = 0u64;
    while let Some(failed) = tasks.join_next().await {
        if matches!(failed, Ok(true) | Err(_)) {
            tx_errors += 1;
        }
    }
    let (blocks, stale, block_errors) = producer.await.unwrap_or_default();
    let all = recorder
        .wait_all(Instant::now().max(start + opts.duration) + opts.drain)
        .await;
    let elapsed = start.elapsed();
    let bytes = net.bytes().await?.since(&before);
    let events = net.event_stats();
    let genesis = net.genesis().clone();
    let off_overlay = net.off_overlay_nodes(&overlay).await;
    if let Ok(net) = Arc::try_unwrap(net) {
        net.stop().await;
    }
    if !all {
        tracing::warn!(
            incomplete = recorder.incomplete(),
            missing_per_node = ?recorder.missing_per_node(),
            "ours: some items did not reach every node"
        );
    }

    let (full, compact): (usize, usize) = blocks
        .iter()
        .filter_map(|i| match &i.item {
            Item::Block(b) => Some((
                RelayMessage::Block(b.clone()).encoded_len(),
                RelayMessage::CompactBlock(CompactBlock::of(b)).encoded_len(),
            )),
            Item::Tx(_) => None,
        })
        .fold((0, 0), |(f, c), (bf, bc)| (f + bf, c + bc));
    let outcomes = recorder.outcomes();
    let report = SystemReport {
        tx: summarise(&outcomes, bounds, Kind::Tx, bytes.tx, opts.nodes),
        block: summarise(&outcomes, bounds, Kind::Block, bytes.block, opts.nodes),
        block_imported: Some(summarise(
            &outcomes,
            bounds,
            Kind::BlockImported,
            bytes.block,
            opts.nodes,
        )),
        compact_block_ratio: (full > 0).then(|| compact as f64 / full as f64),
        stream_bytes: bytes.stream,
        byte_attribution: "relay frames sent (varint header included) by message kind: \
            Transactions+Announce+Request+NotFound = tx, \
            CompactBlock+BlockTxnsRequest+BlockTxns+Block = block"
            .into(),
        notes: [
            ("relay_bytes_all_kinds".into(), bytes.relay_total as f64),
            ("compact_rebuilt".into(), bytes.compact_rebuilt as f64),
            ("compact_partial".into(), bytes.compact_partial as f64),
            ("compact_fallback".into(), bytes.compact_fallback as f64),
            ("retries".into(), bytes.retries as f64),
            (
                "announcements_crossed".into(),
                bytes.announcements_crossed as f64,
            ),
            (
                "announcements_yielded".into(),
                bytes.announcements_yielded as f64,
            ),
            ("slow_peers".into(), bytes.slow_peers as f64),
            ("tx_arrivals_via_block".into(), events.tx_via_block as f64),
            ("lagged_events".into(), events.lagged as f64),
            ("blocks_on_stale_tip".into(), stale as f64),
            ("nodes_off_overlay".into(), off_overlay as f64),
            ("inject_errors".into(), (tx_errors + block_errors) as f64),
            ("phase_seconds".into(), elapsed.as_secs_f64()),
            ("cpu_cores_busy".into(), cpu.busy(elapsed)),
        ]
        .into_iter()
        .chain(hops::notes(
            &overlay,
            &outcomes,
            |o| o.kind == Kind::Block,
            "block",
        ))
        .chain(
            MessageKind::ALL
                .iter()
                .zip(bytes.per_kind.into_iter().zip(bytes.frames_per_kind))
                .filter(|(_, (b, _))| *b > 0)
                .flat_map(|(k, (b, n))| {
                    [
                        (format!("bytes_{}", k.name()), b as f64),
                        (format!("frames_{}", k.name()), n as f64),
                    ]
                }),
        )
        .collect(),
    };
    let mut injections = txs;
    injections.extend(blocks);
    injections.sort_by_key(|i| i.at);
    Ok((report, injections, genesis))
}

/// A block's size as an item: its canonical encoding (what gossipsub carries as the payload).
fn block_len(block: &playergold_primitives::Block) -> usize {
    codec::encoded_len(block)
}

/// What the baseline takes over from our run.
struct GossipStart<'a> {
    /// Our run's transactions and blocks, replayed at the same offsets from the same nodes.
    injections: &'a [Injection],
    /// Our chains' genesis, which our blocks build on.
    genesis: Genesis,
    /// Our mempools' starting backlog.
    backlog: Vec<Transaction>,
}

async fn run_gossipsub(
    opts: &Options,
    overlay: Arc<Overlay>,
    handover: GossipStart<'_>,
    bounds: &[Duration],
) -> Result<SystemReport, BenchError> {
    let GossipStart {
        injections,
        genesis,
        backlog,
    } = handover;
    let recorder = Recorder::new(opts.nodes);
    let work_stats = Arc::new(WorkStats::default());
    // Kept until the end: the nodes' chain databases.
    let (_chains, work) = if opts.gossip_node_work {
        let chains = BenchChains::with_genesis(genesis, opts.block_min_tx_age())
            .map_err(BenchError::Chains)?;
        let work = gossip_node_work(opts.nodes, &chains, backlog, &work_stats).await?;
        (Some(chains), work)
    } else {
        (None, Vec::new())
    };
    let started = Instant::now();
    let net = Arc::new(GossipNet::start(overlay.clone(), recorder.clone(), work).await?);
    // Wait for every link to carry both subscriptions, then for the first heartbeat.
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mesh = net.mesh().await?;
        let ready = mesh
            .iter()
            .enumerate()
            .all(|(i, m)| m.subscribed >= overlay.degree(i));
        if ready || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep_until(started + opts.gossip_warmup).await;
    let mesh = net.mesh().await?;
    let before = net.bytes();
    let cpu = CpuClock::start();
    let start = Instant::now();

    let payloads: Vec<(Duration, usize, Kind, Vec<u8>)> = injections
        .iter()
        .map(|i| match &i.item {
            Item::Tx(tx) => (i.at, i.node, Kind::Tx, codec::encode(tx)),
            Item::Block(b) => (i.at, i.node, Kind::Block, codec::encode(b)),
        })
        .collect();
    let mut counts: HashMap<Kind, u64> = HashMap::new();
    let mut tasks = JoinSet::new();
    for (at, node, kind, data) in payloads {
        tokio::time::sleep_until(start + at).await;
        *counts.entry(kind).or_default() += 1;
        let (net, recorder) = (net.clone(), recorder.clone());
        tasks.spawn(async move {
            recorder.register(payload_key(&data), kind, node, data.len());
            let topic = match kind {
                Kind::Tx => Topic::Tx,
                Kind::Block | Kind::BlockImported => Topic::Block,
            };
            net.publish(node, topic, data).await.is_err()
        });
    }
    let mut errors = 0u64;
    while let Some(failed) = tasks.join_next().await {
        if matches!(failed, Ok(true) | Err(_)) {
            errors += 1;
        }
    }
    let all = recorder
        .wait_all(Instant::now().max(start + opts.duration) + opts.drain)
        .await;
    let elapsed = start.elapsed();
    let bytes = net.bytes().since(&before);
    if let Ok(net) = Arc::try_unwrap(net) {
        net.stop().await;
    }
    if !all {
        tracing::warn!(
            incomplete = recorder.incomplete(),
            missing_per_node = ?recorder.missing_per_node(),
            "gossipsub: some items did not reach every node"
        );
    }

    let (n_tx, n_block) = (
        counts.get(&Kind::Tx).copied().unwrap_or(0),
        counts.get(&Kind::Block).copied().unwrap_or(0),
    );
    let control = bytes
        .stream
        .saturating_sub(bytes.tx_messages + bytes.block_messages);
    let tx_share = if n_tx + n_block > 0 {
        n_tx as f64 / (n_tx + n_block) as f64
    } else {
        0.0
    };
    let control_tx = (control as f64 * tx_share).round() as u64;
    let control_block = control - control_tx.min(control);
    let outcomes = recorder.outcomes();
    let mean = |f: fn(&crate::gossip::MeshStatus) -> usize| {
        mesh.iter().map(f).sum::<usize>() as f64 / mesh.len().max(1) as f64
    };
    Ok(SystemReport {
        tx: summarise(
            &outcomes,
            bounds,
            Kind::Tx,
            bytes.tx_messages + control_tx,
            opts.nodes,
        ),
        block: summarise(
            &outcomes,
            bounds,
            Kind::Block,
            bytes.block_messages + control_block,
            opts.nodes,
        ),
        block_imported: None,
        compact_block_ratio: None,
        stream_bytes: bytes.stream,
        byte_attribution: "all stream bytes during the workload: each topic's message bytes \
            (gossipsub per-topic counters) plus the rest (control, RPC framing) shared by \
            message count"
            .into(),
        notes: [
            ("tx_message_bytes".into(), bytes.tx_messages as f64),
            ("block_message_bytes".into(), bytes.block_messages as f64),
            ("control_and_framing_bytes".into(), control as f64),
            ("mean_tx_mesh".into(), mean(|m| m.tx_mesh)),
            ("mean_block_mesh".into(), mean(|m| m.block_mesh)),
            ("publish_errors".into(), errors as f64),
            ("phase_seconds".into(), elapsed.as_secs_f64()),
            ("cpu_cores_busy".into(), cpu.busy(elapsed)),
        ]
        .into_iter()
        .chain(
            opts.gossip_node_work
                .then(|| work_stats.notes())
                .into_iter()
                .flatten(),
        )
        .chain(hops::notes(
            &overlay,
            &outcomes,
            |o| o.kind == Kind::Block,
            "block",
        ))
        .collect(),
    })
}

/// Opens every gossipsub node's chain, fills its mempool with the backlog our nodes started
/// with, and starts its work thread.
async fn gossip_node_work(
    nodes: usize,
    chains: &BenchChains,
    backlog: Vec<Transaction>,
    stats: &Arc<WorkStats>,
) -> Result<Vec<NodeWork>, BenchError> {
    let mut loads = JoinSet::new();
    let mut work = Vec::with_capacity(nodes);
    for node in 0..nodes {
        let chain = chains.open(node).map_err(BenchError::Chains)?;
        work.push(NodeWork::start(chain.clone(), stats.clone()).map_err(BenchError::Chains)?);
        let backlog = backlog.clone();
        loads.spawn_blocking(move || {
            let refused = chain
                .submit_transactions(backlog, TimestampMs::now())
                .into_iter()
                .filter(Result::is_err)
                .count();
            (node, refused)
        });
    }
    while let Some(loaded) = loads.join_next().await {
        match loaded {
            Ok((_, 0)) => {}
            Ok((node, refused)) => {
                return Err(BenchError::Chains(format!(
                    "gossipsub node {node}'s mempool refused {refused} backlog transactions"
                )));
            }
            Err(e) => return Err(BenchError::Chains(e.to_string())),
        }
    }
    Ok(work)
}

/// CPU time of this process (all threads), to tell a CPU-bound run from a network-bound one.
#[derive(Debug, Clone, Copy)]
struct CpuClock(Option<f64>);

impl CpuClock {
    fn start() -> Self {
        Self(process_cpu_seconds())
    }

    /// Mean cores busy since the start over `wall`: 2.0 on this 2-core machine means every
    /// measured latency includes waiting for a CPU. NaN where `/proc` is unavailable.
    fn busy(&self, wall: Duration) -> f64 {
        match (self.0, process_cpu_seconds()) {
            (Some(a), Some(b)) if !wall.is_zero() => (b - a) / wall.as_secs_f64(),
            _ => f64::NAN,
        }
    }
}

/// User + system CPU seconds of this process, in clock ticks of 1/100 s (the value of
/// `CLK_TCK` on every Linux platform Rust targets by default).
fn process_cpu_seconds() -> Option<f64> {
    crate::procfs::cpu_ticks(std::process::id()).map(|ticks| ticks as f64 / 100.0)
}

/// The 1-minute load average from `/proc/loadavg` (NaN where unavailable).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
