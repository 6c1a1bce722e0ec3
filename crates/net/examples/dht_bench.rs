//! DHT benchmark: lookup latency in an in-process network, and how long a fresh node with one
//! bootstrap address takes to reach its outbound target.
//!
//! ```text
//! cargo run --release -p playergold-net --features test-utils --example dht_bench [-- --nodes 100 --lookups 60]
//! ```
//!
//! 1. Starts `--nodes` (default 100) real nodes on 127.<n>.0.1 over QUIC (TLS 1.3), DHT in
//!    server mode, mDNS off, production heartbeats; node `i` bootstraps from nodes `i-1` and
//!    `(i-1)/2` only, so the DHT and peer exchange must do the rest. Ten nodes declare
//!    `ai-compute`. Waits until every node has `min_peers` (8) outbound peers.
//! 2. From ten nodes in turn, runs `--lookups` (default 60) `FIND_NODE` lookups of random ids
//!    (`closest_peers`) and as many provider lookups of `ai-compute` (`find_peers_with`), and
//!    reports p50/p95/max latency and the share of the AI nodes (other than itself) each
//!    provider lookup found.
//! 3. Starts one more node whose only knowledge is one bootstrap address and reports the time
//!    until it has `min_peers` peers, and until they are all outbound.
//!
//! Every phase is bounded ([`FORM_TIMEOUT`], [`SETTLE`], [`LOOKUP_BUDGET`] per kind of lookup,
//! [`JOIN_TIMEOUT`], and each lookup by the network's own lookup timeout). Latencies are over loopback: they measure the protocol's round
//! trips and the nodes' processing on a shared CPU, not a WAN.

use std::time::{Duration, Instant};

use playergold_net::testnet::{TestNode, node_ip, test_config, wait_all};
use playergold_net::{Capabilities, Direction, NetworkConfig, PeerId, PeerInfo};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest wait for the network to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the fresh node to reach its target.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Nodes declaring ai-compute: one in ten, so that every other node's AI quota (2 slots) costs
/// each AI node about 18 inbound peers, well within its 40 inbound slots.
const AI_NODES: usize = 10;
/// Nodes the lookups are started from.
const LOOKUP_ORIGINS: usize = 10;
/// Pause after the network formed, before measuring: the nodes' start-up lookups (Kademlia's
/// bootstrap, capability announcements and lookups) finish, so the lookups measured do not
/// queue behind them.
const SETTLE: Duration = Duration::from_secs(30);
/// Longest the lookups of one kind may take in all; the rest are skipped (`n` says how many
/// ran).
const LOOKUP_BUDGET: Duration = Duration::from_secs(120);

struct Args {
    nodes: usize,
    lookups: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        nodes: 100,
        lookups: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse()?,
            "--lookups" => args.lookups = value.parse()?,
            other => return Err(format!("unknown flag {other} (use --nodes, --lookups)").into()),
        }
    }
    if !(12..=250).contains(&args.nodes) {
        return Err("--nodes must be between 12 and 250 (one 127.<n>.0.1 per node)".into());
    }
    Ok(args)
}

fn config(i: usize, bootstrap: &[&TestNode]) -> NetworkConfig {
    let defaults = NetworkConfig::new(test_config(node_ip(0)).network);
    let mut cfg = test_config(node_ip(u8::try_from(i).unwrap_or(u8::MAX)));
    cfg.bootstrap = bootstrap.iter().map(|n| n.dial_addr()).collect();
    // Production heartbeats and peer exchange pacing: a hundred nodes on one machine should
    // cost what they cost in production.
    cfg.heartbeat_interval = defaults.heartbeat_interval;
    cfg.heartbeat_timeout = defaults.heartbeat_timeout;
    cfg.addr_request_interval = defaults.addr_request_interval;
    cfg
}

/// CPU time this process has used (user + system), from `/proc/self/stat` (Linux reports it
/// in ticks of 1/100 s).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14th and 15th.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: u64 = rest.get(11)?.parse().ok()?;
            let stime: u64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Share of all cores busy: `cpu` used over `wall`.
fn load(cpu: Duration, wall: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    cpu.as_secs_f64() / wall.as_secs_f64().max(f64::EPSILON) / cores
}

fn outbound(peers: &[PeerInfo]) -> usize {
    peers
        .iter()
        .filter(|i| i.direction == Direction::Outbound)
        .count()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn row(name: &str, samples: &mut [Duration], extra: &str) {
    samples.sort();
    println!(
        "| {name:<28} | {:>5} | {:>9.1?} | {:>9.1?} | {:>9.1?} | {extra:<22} |",
        samples.len(),
        percentile(samples, 50),
        percentile(samples, 95),
        samples.last().copied().unwrap_or_default(),
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let min_peers = config(0, &[]).min_peers;
    let ai_every = args.nodes / AI_NODES;
    let mut ai_total = 0;

    let started = Instant::now();
    let mut nodes: Vec<TestNode> = Vec::with_capacity(args.nodes + 1);
    for i in 0..args.nodes {
        let boot: Vec<&TestNode> = if i == 0 {
            Vec::new()
        } else if (i - 1) / 2 == i - 1 {
            vec![&nodes[i - 1]]
        } else {
            vec![&nodes[i - 1], &nodes[(i - 1) / 2]]
        };
        let mut cfg = config(i, &boot);
        if i % ai_every == ai_every / 2 && ai_total < AI_NODES {
            cfg.capabilities = Capabilities::AI_COMPUTE;
            ai_total += 1;
        }
        nodes.push(TestNode::spawn_fresh(cfg).await?);
    }
    let spawned = started.elapsed();
    wait_all(&nodes, FORM_TIMEOUT, |_, p| outbound(p) >= min_peers).await?;
    let formed = started.elapsed();
    eprintln!(
        "{} nodes started in {spawned:.1?}; all at {min_peers} outbound peers after {formed:.1?}",
        args.nodes
    );

    let origins: Vec<&TestNode> = nodes
        .iter()
        .step_by((args.nodes / LOOKUP_ORIGINS).max(1))
        .take(LOOKUP_ORIGINS)
        .collect();
    let (cpu_s, wall_s) = (cpu_time(), Instant::now());
    tokio::time::sleep(SETTLE).await;
    let idle_load = load(cpu_time() - cpu_s, wall_s.elapsed());
    let mut tables = Vec::with_capacity(nodes.len());
    for node in &nodes {
        tables.push(node.handle.dht_status().await?.routing_table);
    }
    tables.sort_unstable();
    let mut find_node = Vec::with_capacity(args.lookups);
    let budget = Instant::now() + LOOKUP_BUDGET;
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut found_sizes = Vec::with_capacity(args.lookups);
    for k in 0..args.lookups {
        if Instant::now() >= budget {
            break;
        }
        let origin = origins[k % origins.len()];
        let t = Instant::now();
        let peers = origin.handle.closest_peers(PeerId::random()).await?;
        find_node.push(t.elapsed());
        found_sizes.push(peers.len());
    }
    let (cpu1, wall1) = (cpu_time(), Instant::now());
    let mut providers = Vec::with_capacity(args.lookups);
    let (mut ai_found, mut ai_expected) = (0, 0);
    let budget = Instant::now() + LOOKUP_BUDGET;
    for k in 0..args.lookups {
        if Instant::now() >= budget {
            break;
        }
        let origin = origins[k % origins.len()];
        let t = Instant::now();
        let found = origin
            .handle
            .find_peers_with(Capabilities::AI_COMPUTE)
            .await?;
        providers.push(t.elapsed());
        ai_found += found.len();
        let itself = origin
            .config
            .capabilities
            .contains(Capabilities::AI_COMPUTE);
        ai_expected += ai_total - usize::from(itself);
    }

    // A fresh node that knows one address.
    let fresh_cfg = config(args.nodes, &[&nodes[args.nodes / 3]]);
    let join_started = Instant::now();
    let fresh = TestNode::spawn_fresh(fresh_cfg).await?;
    fresh
        .wait_peers(JOIN_TIMEOUT, |p| p.len() >= min_peers)
        .await?;
    let to_min = join_started.elapsed();
    fresh
        .wait_peers(JOIN_TIMEOUT, |p| outbound(p) >= min_peers)
        .await?;
    let to_outbound = join_started.elapsed();
    // Its routing table fills as identify messages arrive; wait on events until it holds
    // `min_peers` entries.
    let mut events = fresh.handle.subscribe();
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    while fresh.handle.dht_status().await?.routing_table < min_peers {
        tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| "the fresh node's routing table did not fill")?
            .map_err(|e| format!("events: {e}"))?;
    }
    let to_table = join_started.elapsed();

    let avg = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    println!();
    println!(
        "DHT benchmark: {} nodes (QUIC on loopback, {} cores), {} lookups of each kind from {} nodes",
        args.nodes,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.lookups,
        origins.len()
    );
    println!(
        "| {:<28} | {:>5} | {:>9} | {:>9} | {:>9} | {:<22} |",
        "measure", "n", "p50", "p95", "max", "result"
    );
    println!(
        "|{:-<30}|{:-<7}|{:-<11}|{:-<11}|{:-<11}|{:-<24}|",
        "", "", "", "", "", ""
    );
    row(
        "FIND_NODE (closest_peers)",
        &mut find_node,
        &format!("avg {:.1} peers", avg(&found_sizes)),
    );
    row(
        "providers (find_peers_with)",
        &mut providers,
        &format!("{ai_found}/{ai_expected} AI nodes found"),
    );
    for (what, took) in [
        (format!("fresh node to {min_peers} peers"), to_min),
        (format!("fresh node to {min_peers} outbound"), to_outbound),
        (format!("fresh node DHT table >= {min_peers}"), to_table),
    ] {
        println!(
            "| {what:<28} | {:>5} | {took:>9.1?} | {:>9} | {:>9} | {:<22} |",
            1, "", "", "one bootstrap address"
        );
    }
    println!(
        "routing tables after settling: min {} / median {} / max {} peers",
        tables[0],
        tables[tables.len() / 2],
        tables[tables.len() - 1]
    );
    println!("network formation: {formed:.1?} ({spawned:.1?} to start the nodes)");
    println!(
        "CPU busy: {:.0}% while idle after settling, {:.0}% during the FIND_NODE lookups (of all cores)",
        idle_load * 100.0,
        load(cpu1 - cpu0, wall1 - wall0) * 100.0
    );

    fresh.stop().await;
    for node in nodes {
        node.stop().await;
    }
    Ok(())
}
