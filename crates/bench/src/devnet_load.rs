//! `devnet-load`: load on real `playergold` processes, started the way an operator starts a
//! devnet, measured from the outside through each node's HTTP API and `/proc`.
//!
//! ```text
//!  playergold binary (--playergold, next to the bench, or `cargo build`)
//!    └─► `playergold --json devnet --nodes N --dir DIR --seconds T` ── Devnet guard (Drop stops it)
//!          {"event":"running"}: api, peer_id, data_dir per node; PIDs from /proc children
//!  warm-up   GET /api/v1/status each second, until every node has min(8, N−1) peers (bounded)
//!  ┌ sampler, every --sample-seconds until the drain ends:
//!  │   GET /api/v1/status, /api/v1/bans; /proc/<pid>/stat (CPU), /status (VmRSS) ──► Sample
//!  ├ load      /metrics + /proc CPU ─► tps signed txs/s, round-robin, POST /api/v1/transactions
//!  │           (≤ 64 in flight; every TxId kept) ─► /proc CPU + /metrics
//!  └ drain     ≥ 3 slots, then until every best hash agrees (bounded)
//!  inclusion  GET /api/v1/chain + /api/v1/blocks ─► submitted TxIds in each node's best chain
//!  Report (plain numbers: a test asserts on it; JSON; table) ◄─ SIGTERM the devnet, wait
//! ```
//!
//! At `--tps 0` nothing is submitted: the run only samples, to see that idle nodes stay
//! connected and how much CPU and memory they use. Everything is bounded in count (submissions
//! in flight, samples, blocks walked, bytes read per answer) and in time (each request, each
//! phase, and the devnet's own `--seconds`, which stops it even if the bench is killed).

mod api;
mod devnet;
mod inclusion;
mod load;
mod report;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use playergold_primitives::TimestampMs;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

pub use api::ApiError;
pub use report::{NodeSummary, Phase, Report, Sample};

use crate::procfs::{clock_ticks_per_sec, cpu_ticks, rss_kib};
use api::{NodeApi, REQUEST_TIMEOUT, Status};
use devnet::Devnet;
use inclusion::Inclusion;
use load::LoadOutcome;
use report::{MetricsDelta, delay_quantile_ms, median, observations};

/// Default number of nodes.
pub const DEFAULT_NODES: usize = 50;
/// Default transactions per second.
pub const DEFAULT_TPS: u32 = 100;
/// Default length of the load, seconds.
pub const DEFAULT_SECONDS: f64 = 120.0;
/// Default slot duration, ms (the devnet's own default).
pub const DEFAULT_SLOT_MS: u64 = 1_000;
/// Default bound of the warm-up, seconds.
pub const DEFAULT_WARMUP_SECONDS: f64 = 15.0;
/// Default time between samples, seconds.
pub const DEFAULT_SAMPLE_SECONDS: f64 = 5.0;

/// Shortest time between samples: each costs two requests per node, which the nodes'
/// measured CPU includes.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest load: bounds the samples kept and the devnet's `--seconds`.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest warm-up.
const MAX_WARMUP: Duration = Duration::from_secs(10 * 60);
/// Longest slot: the drain waits several of them.
const MAX_SLOT_MS: u64 = 60_000;
/// Most transactions in one run: their ids (32 bytes each) are kept for the inclusion check.
const MAX_TRANSACTIONS: u64 = 2_000_000;
/// Most samples kept (a day at one a second); later ones are dropped.
const MAX_SAMPLES: usize = 100_000;
/// Most distinct banned peers remembered across samples (the devnet's nodes are at most a few
/// dozen; the bound only keeps a misbehaving API from growing the set).
const MAX_BANNED_TRACKED: usize = 10_000;
/// Status requests in flight at once while sampling, all nodes together.
const SAMPLE_CONCURRENCY: usize = 32;
/// How often the warm-up asks the nodes whether they are connected.
const WARMUP_POLL: Duration = Duration::from_secs(1);
/// Slots the drain waits at least: a transaction waits half a slot in the mempool before a
/// producer includes it (`block_min_tx_age`), then the block needs its slot and its
/// propagation.
const DRAIN_SLOTS: u32 = 3;
/// How much longer than [`DRAIN_SLOTS`] the drain may wait for the best hashes to agree.
const DRAIN_SLACK: Duration = Duration::from_secs(10);
/// How often the drain asks for the best hashes (several times a slot, to find a moment
/// between blocks).
const DRAIN_POLL: Duration = Duration::from_millis(250);
/// How long the inclusion check may take: a few hundred requests at loopback speed, with room
/// for nodes still busy after the load.
const INCLUSION_TIMEOUT: Duration = Duration::from_secs(120);
/// Blocks the inclusion walk may go beyond the slots the run lasted (clock slack, forks).
const EXTRA_BLOCKS: u64 = 16;
/// The file `playergold devnet` describes its nodes in, in its directory.
const DEVNET_FILE: &str = "devnet.json";
/// Time the devnet runs beyond every bounded phase, so that it never stops under the bench.
const DEVNET_MARGIN: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes in the devnet (`playergold devnet` allows up to its `MAX_NODES`, 64).
    pub nodes: usize,
    /// Signed transactions per second, all nodes together; 0 only samples.
    pub tps: u32,
    /// Length of the load (or, at 0 tps, of the watch).
    pub duration: Duration,
    /// Slot duration, ms.
    pub slot_ms: u64,
    /// Longest warm-up; it ends earlier once every node has its minimum of peers.
    pub warmup: Duration,
    /// Time between samples.
    pub sample_interval: Duration,
    /// The `playergold` binary (default: next to this executable, built if missing under
    /// `cargo run`).
    pub playergold: Option<PathBuf>,
    /// The devnet's directory (default: a fresh temporary one, removed afterwards unless the
    /// run fails).
    pub dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: DEFAULT_NODES,
            tps: DEFAULT_TPS,
            duration: Duration::from_secs_f64(DEFAULT_SECONDS),
            slot_ms: DEFAULT_SLOT_MS,
            warmup: Duration::from_secs_f64(DEFAULT_WARMUP_SECONDS),
            sample_interval: Duration::from_secs_f64(DEFAULT_SAMPLE_SECONDS),
            playergold: None,
            dir: None,
        }
    }
}

/// Why the bench could not run to its report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The options are out of range.
    #[error("invalid options: {0}")]
    Options(String),
    /// The `playergold` binary is missing and could not be built.
    #[error("{0}")]
    Binary(String),
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What the bench was doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The devnet did not come up, or stopped under the bench.
    #[error("{0}")]
    Devnet(String),
    /// A node's API failed where the bench cannot go on without it.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The run failed after the devnet's directory was made: it is kept for its logs.
    #[error("{error}\nthe devnet's directory is kept for its logs: {}/node-*/node.log", dir.display())]
    KeptLogs {
        /// The devnet's directory.
        dir: PathBuf,
        /// What failed.
        error: Box<LoadError>,
    },
}

impl Options {
    fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: String| Err(LoadError::Options(m));
        if self.nodes == 0 {
            return bad("--nodes must be at least 1".into());
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "--seconds must be above 0 and at most {}",
                MAX_DURATION.as_secs()
            ));
        }
        if self.sample_interval < MIN_SAMPLE_INTERVAL {
            return bad(format!(
                "--sample-seconds must be at least {}",
                MIN_SAMPLE_INTERVAL.as_secs()
            ));
        }
        if self.warmup > MAX_WARMUP {
            return bad(format!(
                "--warmup-seconds must be at most {}",
                MAX_WARMUP.as_secs()
            ));
        }
        if self.slot_ms == 0 || self.slot_ms > MAX_SLOT_MS {
            return bad(format!("--slot-ms must be in 1..={MAX_SLOT_MS}"));
        }
        let total = f64::from(self.tps) * self.duration.as_secs_f64();
        if total > MAX_TRANSACTIONS as f64 {
            return bad(format!(
                "--tps × --seconds is {total:.0} transactions, above the {MAX_TRANSACTIONS} whose \
                 ids one run keeps: lower --tps or --seconds"
            ));
        }
        Ok(())
    }

    fn slot(&self) -> Duration {
        Duration::from_millis(self.slot_ms)
    }

    /// The longest the drain waits.
    fn max_drain(&self) -> Duration {
        self.slot() * DRAIN_SLOTS + DRAIN_SLACK
    }

    /// The devnet's `--seconds`: every bounded phase after it runs, plus a margin.
    fn devnet_seconds(&self) -> u64 {
        let phases = self.warmup
            + self.duration
            + load::MAX_OVERRUN
            + REQUEST_TIMEOUT
            + self.max_drain()
            + INCLUSION_TIMEOUT
            + DEVNET_MARGIN;
        phases.as_secs() + 1
    }
}

/// Runs the devnet, the warm-up, the load, the drain and the inclusion check; stops the devnet
/// and returns what it measured.
pub async fn run(opts: Options) -> Result<Report, LoadError> {
    opts.validate()?;
    let exe = devnet::find_playergold(opts.playergold.as_deref())?;
    let (dir, temp) = match &opts.dir {
        Some(dir) => (absolute(dir)?, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("playergold-devnet-load-")
                .tempdir()
                .map_err(|source| LoadError::Io {
                    what: "cannot create a temporary directory for the devnet".into(),
                    source,
                })?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    tracing::info!(nodes = opts.nodes, dir = %dir.display(), "starting the devnet");
    let result = async {
        let mut devnet =
            Devnet::start(&exe, opts.nodes, opts.slot_ms, opts.devnet_seconds(), &dir).await?;
        let measured = measure(&opts, &mut devnet).await;
        let stopped = devnet.stop().await;
        let report = measured?;
        stopped?;
        Ok(report)
    }
    .await;
    match result {
        Ok(mut report) => {
            report.playergold = exe.display().to_string();
            report.dir = opts.dir.is_some().then(|| dir.display().to_string());
            Ok(report)
        }
        // Nothing was created (the devnet refused its options): nothing to keep.
        Err(error) if !dir.join(DEVNET_FILE).exists() => Err(error),
        Err(error) => {
            let dir = temp.map_or(dir, tempfile::TempDir::keep);
            Err(LoadError::KeptLogs {
                dir,
                error: Box::new(error),
            })
        }
    }
}

/// `dir` from the current directory when relative: the nodes' `--data-dir` (found in /proc)
/// are compared with the devnet's report of them.
fn absolute(dir: &Path) -> Result<PathBuf, LoadError> {
    if dir.is_absolute() {
        return Ok(dir.to_path_buf());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(dir))
        .map_err(|source| LoadError::Io {
            what: "cannot read the current directory".into(),
            source,
        })
}

/// The CPU time of every node (and of the bench) at one moment.
#[derive(Debug, Clone)]
struct CpuReading {
    at: Instant,
    nodes: Vec<Option<u64>>,
    bench: Option<u64>,
}

impl CpuReading {
    fn now(pids: &[u32]) -> CpuReading {
        CpuReading {
            at: Instant::now(),
            nodes: pids.iter().map(|p| cpu_ticks(*p)).collect(),
            bench: cpu_ticks(std::process::id()),
        }
    }

    /// CPU seconds the nodes used since `earlier` (nodes read both times).
    fn nodes_since(&self, earlier: &CpuReading, ticks_per_sec: u64) -> f64 {
        let ticks: u64 = self
            .nodes
            .iter()
            .zip(&earlier.nodes)
            .filter_map(|(now, then)| Some(now.as_ref()?.saturating_sub(*then.as_ref()?)))
            .sum();
        ticks as f64 / ticks_per_sec as f64
    }

    /// CPU seconds the bench used since `earlier`.
    fn bench_since(&self, earlier: &CpuReading, ticks_per_sec: u64) -> f64 {
        match (self.bench, earlier.bench) {
            (Some(now), Some(then)) => now.saturating_sub(then) as f64 / ticks_per_sec as f64,
            _ => 0.0,
        }
    }

    fn wall_since(&self, earlier: &CpuReading) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// Every node's status (`None`: no answer), asked concurrently.
async fn statuses(apis: &[Arc<NodeApi>]) -> Vec<Option<Status>> {
    futures::stream::iter(
        apis.iter()
            .map(|api| async move { api.status().await.ok() }),
    )
    .buffered(SAMPLE_CONCURRENCY)
    .collect()
    .await
}

/// Every node's `/metrics` text (`None`: no answer).
async fn scrape_metrics(apis: &[Arc<NodeApi>]) -> Vec<Option<String>> {
    futures::stream::iter(
        apis.iter()
            .map(|api| async move { api.metrics().await.ok() }),
    )
    .buffered(SAMPLE_CONCURRENCY)
    .collect()
    .await
}

/// Whether every node answered with at least `min_peers` peers and heights within one.
fn mesh_formed(statuses: &[Option<Status>], min_peers: usize) -> bool {
    let all: Option<Vec<&Status>> = statuses.iter().map(Option::as_ref).collect();
    let Some(all) = all else {
        return false;
    };
    let heights = all.iter().map(|s| s.best_height.0);
    let spread = heights.clone().max().unwrap_or_default() - heights.min().unwrap_or_default();
    all.iter().all(|s| s.peer_count >= min_peers) && spread <= 1
}

/// Whether every node answered with the same best hash.
fn hashes_agree(statuses: &[Option<Status>]) -> bool {
    let mut hashes = statuses.iter().map(|s| s.as_ref().map(|s| s.best_hash));
    match hashes.next() {
        Some(Some(first)) => hashes.all(|h| h == Some(first)),
        _ => false,
    }
}

/// Samples taken, and the distinct peers seen banned.
#[derive(Debug, Default)]
struct Sampled {
    samples: Vec<Sample>,
    banned: HashSet<String>,
}

/// Samples every node every `interval` until told to stop.
struct Sampler<'a> {
    apis: &'a [Arc<NodeApi>],
    pids: &'a [u32],
    min_peers: usize,
    interval: Duration,
    ticks_per_sec: u64,
    started: Instant,
}

impl Sampler<'_> {
    async fn run(self, phase: watch::Receiver<Phase>, mut stop: watch::Receiver<bool>) -> Sampled {
        let mut out = Sampled::default();
        let mut previous = CpuReading::now(self.pids);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return out,
            }
            let current = *phase.borrow();
            let sample = tokio::select! {
                sample = self.take(current, &mut previous, &mut out.banned) => sample,
                _ = stop.wait_for(|stop| *stop) => return out,
            };
            if out.samples.len() < MAX_SAMPLES {
                out.samples.push(sample);
            }
        }
    }

    async fn take(
        &self,
        phase: Phase,
        previous: &mut CpuReading,
        banned: &mut HashSet<String>,
    ) -> Sample {
        let answers: Vec<(Option<Status>, Option<Vec<api::Ban>>)> =
            futures::stream::iter(self.apis.iter().map(|api| async move {
                let (status, bans) = tokio::join!(api.status(), api.bans());
                (status.ok(), bans.ok())
            }))
            .buffered(SAMPLE_CONCURRENCY)
            .collect()
            .await;
        let cpu = CpuReading::now(self.pids);
        let wall = cpu.wall_since(previous);
        let cores = if wall > 0.0 {
            cpu.nodes_since(previous, self.ticks_per_sec) / wall
        } else {
            0.0
        };
        *previous = cpu;
        let rss: Vec<f64> = self
            .pids
            .iter()
            .filter_map(|p| rss_kib(*p))
            .map(|kib| kib as f64 / 1024.0)
            .collect();
        let statuses: Vec<&Status> = answers.iter().filter_map(|(s, _)| s.as_ref()).collect();
        let peers: Vec<f64> = statuses.iter().map(|s| s.peer_count as f64).collect();
        let heights = || statuses.iter().map(|s| s.best_height.0);
        let mut bans_in_force = 0;
        for ban in answers.iter().filter_map(|(_, b)| b.as_ref()).flatten() {
            bans_in_force += 1;
            if banned.len() < MAX_BANNED_TRACKED {
                banned.insert(ban.peer_id.clone());
            }
        }
        Sample {
            t_s: self.started.elapsed().as_secs_f64(),
            phase,
            nodes_answering: statuses.len(),
            peers_min: statuses
                .iter()
                .map(|s| s.peer_count)
                .min()
                .unwrap_or_default(),
            peers_median: median(&peers),
            nodes_below_min_peers: answers.len()
                - statuses
                    .iter()
                    .filter(|s| s.peer_count >= self.min_peers)
                    .count(),
            bans_in_force,
            nodes_not_healthy: answers.len()
                - statuses
                    .iter()
                    .filter(|s| s.network_state == "healthy")
                    .count(),
            height_min: heights().min().unwrap_or_default(),
            height_max: heights().max().unwrap_or_default(),
            mempool_max: statuses
                .iter()
                .map(|s| s.mempool_size)
                .max()
                .unwrap_or_default(),
            cpu_cores: cores,
            rss_median_mib: median(&rss),
            rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        }
    }
}

/// What the phases before the inclusion check measured.
struct Phases {
    warmup: Duration,
    mesh_formed: bool,
    metrics_start: Vec<Option<String>>,
    metrics_end: Vec<Option<String>>,
    cpu_start: CpuReading,
    cpu_end: CpuReading,
    rss_end_mib: Vec<Option<f64>>,
    load_start_ms: u64,
    load: LoadOutcome,
    drain: Duration,
    end: Vec<Option<Status>>,
}

/// The warm-up, the load and the drain; `phase` tells the sampler which one runs.
async fn phases(
    opts: &Options,
    devnet: &mut Devnet,
    apis: &[Arc<NodeApi>],
    pids: &[u32],
    min_peers: usize,
    phase: &watch::Sender<Phase>,
) -> Result<Phases, LoadError> {
    let started = Instant::now();
    let mesh_formed = loop {
        if mesh_formed(&statuses(apis).await, min_peers) {
            break true;
        }
        if started.elapsed() >= opts.warmup {
            break false;
        }
        devnet.check_running()?;
        tokio::time::sleep(WARMUP_POLL).await;
    };
    let warmup = started.elapsed();
    devnet.check_running()?;
    tracing::info!(
        warmup_s = warmup.as_secs_f64(),
        mesh_formed,
        tps = opts.tps,
        "load starts"
    );

    // The receiver lives in the sampler; sending fails only once it has stopped.
    let _ = phase.send(Phase::Load);
    let metrics_start = scrape_metrics(apis).await;
    let cpu_start = CpuReading::now(pids);
    let load_start_ms = TimestampMs::now().0;
    let load = if opts.tps > 0 {
        load::drive(apis, opts.tps, opts.duration).await
    } else {
        tokio::time::sleep(opts.duration).await;
        LoadOutcome::default()
    };
    let cpu_end = CpuReading::now(pids);
    let rss_end_mib = pids
        .iter()
        .map(|p| rss_kib(*p).map(|kib| kib as f64 / 1024.0))
        .collect();
    let metrics_end = scrape_metrics(apis).await;
    devnet.check_running()?;
    tracing::info!(
        submitted = load.ids.len(),
        accepted = load.accepted,
        "load done, draining"
    );

    let _ = phase.send(Phase::Drain);
    let started = Instant::now();
    tokio::time::sleep(opts.slot() * DRAIN_SLOTS).await;
    let end = loop {
        let end = statuses(apis).await;
        if hashes_agree(&end) || started.elapsed() >= opts.max_drain() {
            break end;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    };
    let drain = started.elapsed();
    devnet.check_running()?;
    Ok(Phases {
        warmup,
        mesh_formed,
        metrics_start,
        metrics_end,
        cpu_start,
        cpu_end,
        rss_end_mib,
        load_start_ms,
        load,
        drain,
        end,
    })
}

/// Warm-up, load and drain, with the sampler running alongside; then the inclusion check.
async fn measure(opts: &Options, devnet: &mut Devnet) -> Result<Report, LoadError> {
    let apis: Vec<Arc<NodeApi>> = devnet
        .nodes()
        .iter()
        .map(|n| Arc::new(NodeApi::new(n.api)))
        .collect();
    let pids: Vec<u32> = devnet.nodes().iter().map(|n| n.pid).collect();
    // The devnet's own `min_peers` (crates/node/src/devnet.rs).
    let min_peers = apis.len().saturating_sub(1).min(8);
    let ticks = clock_ticks_per_sec();
    let (phase_tx, phase_rx) = watch::channel(Phase::Warmup);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = Sampler {
        apis: &apis,
        pids: &pids,
        min_peers,
        interval: opts.sample_interval,
        ticks_per_sec: ticks.0,
        started: Instant::now(),
    };
    let phases = async {
        let phases = phases(opts, devnet, &apis, &pids, min_peers, &phase_tx).await;
        // The receiver lives in the sampler, which runs until this is sent.
        let _ = stop_tx.send(true);
        phases
    };
    let (sampled, phases) = tokio::join!(sampler.run(phase_rx, stop_rx), phases);
    let phases = phases?;

    let max_blocks = usize::try_from(
        TimestampMs::now().0.saturating_sub(phases.load_start_ms) / opts.slot_ms + EXTRA_BLOCKS,
    )
    .unwrap_or(usize::MAX);
    let since_ms = phases.load_start_ms.saturating_sub(opts.slot_ms);
    tracing::info!(max_blocks, "checking inclusion");
    let inclusion = tokio::time::timeout(
        INCLUSION_TIMEOUT,
        inclusion::check(&apis, &phases.load.ids, since_ms, max_blocks),
    )
    .await
    .map_err(|_| {
        LoadError::Devnet(format!(
            "the inclusion check did not finish within {}s: the nodes' APIs are too slow to \
             answer (see their node.log)",
            INCLUSION_TIMEOUT.as_secs()
        ))
    })?;
    for api in &apis {
        api.close();
    }
    Ok(build_report(
        opts,
        devnet.nodes(),
        min_peers,
        ticks,
        sampled,
        &phases,
        &inclusion,
    ))
}

/// The report from what the phases, the sampler and the inclusion check found.
fn build_report(
    opts: &Options,
    nodes: &[devnet::NodeProc],
    min_peers: usize,
    (ticks_per_sec, ticks_assumed): (u64, bool),
    sampled: Sampled,
    p: &Phases,
    inclusion: &Inclusion,
) -> Report {
    let n = nodes.len();
    let submitted = p.load.ids.len() as u64;
    let per_tx_node = |total: f64| (submitted > 0).then(|| total / (submitted as f64 * n as f64));
    let pct = |x: f64| (submitted > 0).then(|| 100.0 * x / submitted as f64);
    // A node that did not answer the check counts as including nothing.
    let included: Vec<u64> = inclusion
        .per_node
        .iter()
        .map(|c| c.unwrap_or_default())
        .collect();
    let included_min = included.iter().copied().min().unwrap_or_default();
    let included_max = included.iter().copied().max().unwrap_or_default();
    let included_median = median(&included.iter().map(|c| *c as f64).collect::<Vec<_>>());
    let end: Vec<&Status> = p.end.iter().flatten().collect();
    let final_heights = || end.iter().map(|s| s.best_height.0);
    let final_height_min = final_heights().min().unwrap_or_default();
    let final_height_max = final_heights().max().unwrap_or_default();
    let wall = p.cpu_end.wall_since(&p.cpu_start);
    let cpu_seconds = p.cpu_end.nodes_since(&p.cpu_start, ticks_per_sec);
    let bench_seconds = p.cpu_end.bench_since(&p.cpu_start, ticks_per_sec);
    let per_second = |x: f64| if wall > 0.0 { x / wall } else { 0.0 };
    let delta = MetricsDelta::between(&p.metrics_start, &p.metrics_end);
    let load_wall = p.load.wall.as_secs_f64();
    let rss_end: Vec<f64> = p.rss_end_mib.iter().flatten().copied().collect();
    let per_node = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let end = p.end.get(i).and_then(Option::as_ref);
            let cpu = |r: &CpuReading| r.nodes.get(i).copied().flatten();
            NodeSummary {
                index: node.index,
                peer_id: node.peer_id.clone(),
                log: node.data_dir.join("node.log").display().to_string(),
                included: inclusion.per_node.get(i).copied().flatten(),
                final_height: end.map(|s| s.best_height.0),
                final_peers: end.map(|s| s.peer_count),
                cpu_seconds: match (cpu(&p.cpu_end), cpu(&p.cpu_start)) {
                    (Some(b), Some(a)) => b.saturating_sub(a) as f64 / ticks_per_sec as f64,
                    _ => 0.0,
                },
                rss_mib: p.rss_end_mib.get(i).copied().flatten().unwrap_or_default(),
            }
        })
        .collect();
    let samples_below_min_peers = sampled
        .samples
        .iter()
        .filter(|s| s.phase != Phase::Warmup && s.nodes_below_min_peers > 0)
        .count();

    Report {
        nodes: n,
        tps: opts.tps,
        seconds: opts.duration.as_secs_f64(),
        slot_ms: opts.slot_ms,
        min_peers,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        playergold: String::new(),
        dir: None,
        warmup_seconds: p.warmup.as_secs_f64(),
        warmup_mesh_formed: p.mesh_formed,
        max_bans_in_force: sampled
            .samples
            .iter()
            .map(|s| s.bans_in_force)
            .max()
            .unwrap_or_default(),
        banned_peers: sampled.banned.len(),
        samples_below_min_peers,
        samples: sampled.samples,
        submitted,
        unsent: p.load.unsent,
        accepted: p.load.accepted,
        refused: p.load.refused_total(),
        refused_by_error: p.load.refused.clone(),
        failed: p.load.failed,
        first_errors: p.load.first_errors.clone(),
        submit_rate: if load_wall > 0.0 {
            submitted as f64 / load_wall
        } else {
            0.0
        },
        included_min,
        included_median,
        included_max,
        included_min_pct: pct(included_min as f64),
        included_median_pct: pct(included_median),
        included_max_pct: pct(included_max as f64),
        included_on_any_node: inclusion.on_any_node,
        inclusion_unanswered_nodes: inclusion.per_node.iter().filter(|c| c.is_none()).count(),
        inclusion_blocks: inclusion.blocks,
        inclusion_requests: inclusion.requests,
        drain_seconds: p.drain.as_secs_f64(),
        final_nodes_answering: end.len(),
        final_height_min,
        final_height_max,
        final_heights_spread: final_height_max - final_height_min,
        final_best_hashes_agree: end.len() == n && hashes_agree(&p.end),
        tx_propagation_p50_ms: delay_quantile_ms(&delta.tx_delay, 0.5),
        tx_propagation_p99_ms: delay_quantile_ms(&delta.tx_delay, 0.99),
        tx_propagation_observations: observations(&delta.tx_delay),
        block_propagation_p50_ms: delay_quantile_ms(&delta.block_delay, 0.5),
        block_propagation_p99_ms: delay_quantile_ms(&delta.block_delay, 0.99),
        block_propagation_observations: observations(&delta.block_delay),
        metrics_nodes: delta.nodes,
        load_wall_seconds: wall,
        cpu_seconds_nodes: cpu_seconds,
        cpu_us_per_tx_per_node: per_tx_node(cpu_seconds * 1e6),
        cpu_cores_nodes: per_second(cpu_seconds),
        cpu_cores_bench: per_second(bench_seconds),
        clock_ticks_per_sec: ticks_per_sec,
        clock_ticks_assumed: ticks_assumed,
        rss_median_mib: median(&rss_end),
        rss_max_mib: rss_end.iter().copied().fold(0.0, f64::max),
        relay_bytes_out: delta.relay_out(),
        relay_bytes_per_tx_per_node: per_tx_node(delta.relay_out() as f64),
        relay_bytes_out_by_kind: delta.relay_out_by_kind,
        transport_bytes_out: delta.transport_out,
        transport_bytes_per_tx_per_node: per_tx_node(delta.transport_out as f64),
        relay_slow_peers: delta.slow_peers,
        relay_malformed_frames: delta.malformed_frames,
        connections_established: delta.connections_established,
        per_node,
    }
}
