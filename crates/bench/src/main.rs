//! `playergold-bench`: the PlayerGold benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use playergold_bench::devnet_load;
use playergold_bench::propagation::{self, DEFAULT_BACKLOG, DEFAULT_MAX_BLOCK_TXS, Options};
use playergold_bench::rtt::DEFAULT_RTT_FILE;
use playergold_protocol::relay::{Fanout, PropagationConfig};

#[derive(Parser, Debug)]
#[command(name = "playergold-bench", about = "PlayerGold benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Transaction and block propagation through our relay and through gossipsub, on the same
    /// overlay of in-process nodes (real TLS over TCP, links delayed by half the measured RTT
    /// between their regions).
    Propagation(PropagationArgs),
    /// A devnet of real `playergold` processes (`playergold devnet`) under a load of signed
    /// transactions through their HTTP APIs: peers, bans, heights, inclusion, propagation, CPU,
    /// memory and relay bytes per transaction. `--tps 0` only watches the idle devnet.
    DevnetLoad(DevnetLoadArgs),
}

#[derive(clap::Args, Debug)]
struct DevnetLoadArgs {
    /// Nodes (one process each; `playergold devnet` allows up to 64).
    #[arg(long, default_value_t = devnet_load::DEFAULT_NODES)]
    nodes: usize,
    /// Signed transactions per second, all nodes together (0: only sample).
    #[arg(long, default_value_t = devnet_load::DEFAULT_TPS)]
    tps: u32,
    /// Length of the load in seconds.
    #[arg(long, default_value_t = devnet_load::DEFAULT_SECONDS)]
    seconds: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/devnet-load.json")]
    out: PathBuf,
    /// Slot duration in milliseconds.
    #[arg(long, default_value_t = devnet_load::DEFAULT_SLOT_MS)]
    slot_ms: u64,
    /// Longest warm-up before the load, in seconds; it ends earlier once every node has
    /// min(8, nodes − 1) peers.
    #[arg(long, default_value_t = devnet_load::DEFAULT_WARMUP_SECONDS)]
    warmup_seconds: f64,
    /// Seconds between samples of every node.
    #[arg(long, default_value_t = devnet_load::DEFAULT_SAMPLE_SECONDS)]
    sample_seconds: f64,
    /// The playergold binary [default: the one next to this bench, built if missing under
    /// `cargo run`].
    #[arg(long)]
    playergold: Option<PathBuf>,
    /// Directory of the devnet, kept afterwards [default: a temporary one, removed unless the
    /// run fails].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct PropagationArgs {
    /// Nodes per system.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Length of the workload in seconds (each system runs it once).
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/propagation.json")]
    out: PathBuf,
    /// Region round-trip-time matrix (CSV, ms). A relative path is also tried from the
    /// workspace root.
    #[arg(long, default_value = DEFAULT_RTT_FILE)]
    rtt_file: PathBuf,
    /// Target links per node.
    #[arg(long, default_value_t = 8)]
    degree: usize,
    /// Transactions per second, all nodes together.
    #[arg(long, default_value_t = 20.0)]
    tx_rate: f64,
    /// Milliseconds between blocks.
    #[arg(long, default_value_t = 2_000)]
    block_interval_ms: u64,
    /// Most transactions per block (a full block must fit gossipsub's 64 KiB default limit).
    #[arg(long, default_value_t = DEFAULT_MAX_BLOCK_TXS)]
    max_block_txs: usize,
    /// Transactions preloaded into every mempool before the workload (mempools in sync, so
    /// blocks are full-size and rebuilt from mempools).
    #[arg(long, default_value_t = DEFAULT_BACKLOG)]
    backlog: usize,
    /// Tokio worker threads. More than the CPU count on purpose: our relay runs each node's
    /// engine on its own thread, and gossipsub nodes should not get a smaller share of a busy
    /// machine's CPUs merely for running on fewer threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Seed of the overlay, the regions and the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds items may take to arrive after the last injection.
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Seconds from gossipsub's start to its workload (its first heartbeat comes at 5 s).
    #[arg(long, default_value_t = 6.0)]
    gossip_warmup_seconds: f64,
    /// Peers our relay pushes each transaction to in full, the others getting its id: `sqrt`
    /// (the default, ⌈√peers⌉), a count (`2`) or a fraction of the peers (`0.5`).
    #[arg(long, default_value = "sqrt", value_parser = parse_fanout)]
    tx_fanout: Fanout,
    /// How long one side of each link holds back a relayed transaction's announcement, in ms
    /// (`PropagationConfig::announce_yield`; default: its default).
    #[arg(long)]
    announce_yield_ms: Option<u64>,
    /// Gossipsub's nodes only relay: they keep no mempool and import no block. By default they
    /// do both with what they are delivered, as our nodes do, since on this machine's shared
    /// CPU a node's work slows the nodes still relaying.
    #[arg(long)]
    gossip_relay_only: bool,
}

fn parse_fanout(s: &str) -> Result<Fanout, String> {
    if s == "sqrt" {
        return Ok(Fanout::Sqrt);
    }
    if let Ok(n) = s.parse::<usize>() {
        return Ok(Fanout::Fixed(n));
    }
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(Fanout::Fraction(f)),
        _ => Err(format!(
            "{s:?} is not a fanout: use sqrt, a peer count or a fraction in [0, 1]"
        )),
    }
}

fn secs(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{name} must be a number of seconds"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,yamux=error,playergold_bench=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Propagation(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(propagation_command(args))
        }
        Command::DevnetLoad(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(devnet_load_command(args))
        }
    }
}

async fn devnet_load_command(args: DevnetLoadArgs) -> anyhow::Result<()> {
    let opts = devnet_load::Options {
        nodes: args.nodes,
        tps: args.tps,
        duration: secs("seconds", args.seconds)?,
        slot_ms: args.slot_ms,
        warmup: secs("warmup-seconds", args.warmup_seconds)?,
        sample_interval: secs("sample-seconds", args.sample_seconds)?,
        playergold: args.playergold,
        dir: args.dir,
    };
    // On SIGINT or SIGTERM the run is dropped, and with it the devnet (its guard stops it).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let report = tokio::select! {
        report = devnet_load::run(opts) => report?,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted: the devnet was stopped"),
        _ = term.recv() => anyhow::bail!("terminated: the devnet was stopped"),
    };
    print!("{}", report.table());
    write_json(&args.out, &report)
}

/// Writes `report` as pretty JSON to `out`, creating its directory.
fn write_json(out: &std::path::Path, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out, json + "\n").with_context(|| format!("cannot write {}", out.display()))?;
    println!("report written to {}", out.display());
    Ok(())
}

async fn propagation_command(args: PropagationArgs) -> anyhow::Result<()> {
    let opts = Options {
        nodes: args.nodes,
        duration: secs("seconds", args.seconds)?,
        degree: args.degree,
        tx_rate: args.tx_rate,
        block_interval: Duration::from_millis(args.block_interval_ms),
        max_block_txs: args.max_block_txs,
        backlog: args.backlog,
        seed: args.seed,
        rtt_file: args.rtt_file,
        drain: secs("drain-seconds", args.drain_seconds)?,
        gossip_warmup: secs("gossip-warmup-seconds", args.gossip_warmup_seconds)?,
        tx_fanout: args.tx_fanout,
        announce_yield: args.announce_yield_ms.map_or(
            PropagationConfig::default().announce_yield,
            Duration::from_millis,
        ),
        gossip_node_work: !args.gossip_relay_only,
    };
    let report = propagation::run(&opts).await?;
    print!("{}", report.table());
    write_json(&args.out, &report)
}
