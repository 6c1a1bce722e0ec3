//! `playergold devnet`: a whole network on this machine, one OS process per node.
//!
//! ```text
//!  devnet --nodes N --dir DIR
//!    ├─ DIR/node-i/{node_key, genesis.toml (shared, all N validators), config.toml}
//!    │     config: p2p on 127.0.0.1:<free port>, API on 127.0.0.1:<free port>,
//!    │             node 0 as bootstrap, mDNS off (unless --mdns), local addresses allowed
//!    ├─ DIR/devnet.json: peer_id, p2p multiaddr, api, data_dir of every node
//!    └─ unless --init-only: `playergold node --data-dir DIR/node-i` × N (logs in node.log),
//!       --tps R spread over the nodes, Ctrl-C / SIGTERM (or --seconds) stops them all
//! ```
//!
//! Running it again on the same DIR restarts the same devnet with its chains. With `--json`,
//! `--init-only` prints the devnet as one JSON object, and a running devnet prints one JSON
//! object per line: `{"event": "running", ...}` once every node serves, then
//! `{"event": "stopped", "reason": ...}`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use playergold_primitives::{Genesis, Keypair, TimestampMs};
use serde::{Deserialize, Serialize};

use crate::{GENESIS_FILE, NODE_KEY_FILE, config, keyfile, network};

/// File describing a devnet, in its directory.
pub(crate) const DEVNET_FILE: &str = "devnet.json";
/// Most nodes one devnet may have: each is a process with its own database and sockets (about
/// 25 MiB and 100 file descriptors idle). 128 leaves room for the 100-process idle check of
/// `playergold-bench devnet-load --tps 0`.
const MAX_NODES: usize = 128;
/// How long the nodes may take to start serving their API.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopped nodes may take to exit before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the supervisor checks on its nodes.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);

/// Arguments of `playergold devnet`.
#[derive(clap::Args, Debug)]
pub(crate) struct DevnetArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Directory holding the nodes' data directories and devnet.json.
    #[arg(long, default_value = "target/devnet")]
    dir: PathBuf,
    /// Signed transactions per second to drive into the network (spread over the nodes).
    #[arg(long, default_value_t = 0)]
    tps: u32,
    /// Only create the directories and devnet.json; start nothing.
    #[arg(long)]
    init_only: bool,
    /// Let the nodes find each other with mDNS too (multicast on every interface).
    #[arg(long)]
    mdns: bool,
    /// Slot duration in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    slot_ms: u64,
    /// Stop by itself after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    seconds: Option<u64>,
}

/// `DIR/devnet.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DevnetFile {
    /// Network name.
    pub(crate) network: String,
    /// The nodes, in index order.
    pub(crate) nodes: Vec<DevnetNode>,
}

/// One node of a devnet.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DevnetNode {
    /// Its PeerId.
    pub(crate) peer_id: String,
    /// Its p2p address with `/p2p/<peer_id>`.
    pub(crate) p2p: String,
    /// Its HTTP API address.
    pub(crate) api: SocketAddr,
    /// Its data directory.
    pub(crate) data_dir: PathBuf,
}

/// Ports the OS says are free now (a race with other programs is possible but unlikely; a node
/// that cannot bind says so and the devnet stops).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Hold every listener until all are chosen so the OS never hands out one port twice.
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Creates a devnet of `nodes` nodes in `dir`; fails if `dir` already holds one.
fn create(dir: &Path, nodes: usize, mdns: bool, slot_ms: u64) -> anyhow::Result<DevnetFile> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create devnet directory {}", dir.display()))?;
    let keys: Vec<Keypair> = (0..nodes).map(|_| Keypair::generate()).collect();
    let mut genesis = Genesis::devnet(
        "devnet",
        keys.iter().map(Keypair::public).collect(),
        TimestampMs::now(),
    )?;
    genesis.slot_duration_ms = slot_ms;
    genesis.validate()?;
    let genesis_toml = toml::to_string_pretty(&genesis)?;
    let ports = free_ports(2 * nodes)?;
    let mut out = Vec::with_capacity(nodes);
    for (i, key) in keys.iter().enumerate() {
        let data_dir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        keyfile::create(&data_dir.join(NODE_KEY_FILE), key)?;
        std::fs::write(data_dir.join(GENESIS_FILE), &genesis_toml)?;
        let peer_id = network::peer_id_of(key)?;
        let p2p_port = ports.get(2 * i).copied().unwrap_or_default();
        let api_port = ports.get(2 * i + 1).copied().unwrap_or_default();
        let p2p = format!("/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{peer_id}");
        out.push(DevnetNode {
            peer_id: peer_id.to_string(),
            p2p,
            api: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), api_port),
            data_dir,
        });
    }
    let bootstrap = out.first().map(|n| n.p2p.clone()).unwrap_or_default();
    for (i, node) in out.iter().enumerate() {
        let listen = node
            .p2p
            .split("/p2p/")
            .next()
            .unwrap_or_default()
            .to_string();
        let capabilities: Vec<&str> = if i % 2 == 0 {
            vec!["validator", "ai-compute"]
        } else {
            vec!["validator"]
        };
        let settings = toml::toml! {
            listen = [listen]
            mdns = mdns
            dht = true
            allow_local_addresses = true
            api = (node.api.to_string())
            min_peers = ((nodes - 1).min(8))
            capabilities = capabilities
        };
        let mut text = format!(
            "# Devnet node {i} of {nodes}, written by `playergold devnet`.\n{}",
            toml::to_string(&settings)?
        );
        if i > 0 {
            text.push_str(&format!("bootstrap = [\"{bootstrap}\"]\n"));
        }
        std::fs::write(node.data_dir.join(config::CONFIG_FILE), text)?;
    }
    let file = DevnetFile {
        network: genesis.network.clone(),
        nodes: out,
    };
    std::fs::write(dir.join(DEVNET_FILE), serde_json::to_string_pretty(&file)?)?;
    Ok(file)
}

/// Loads the devnet in `dir`, or creates one; says which (unless `json`).
fn load_or_create(args: &DevnetArgs, json: bool) -> anyhow::Result<DevnetFile> {
    if !(1..=MAX_NODES).contains(&args.nodes) {
        bail!("--nodes {} is outside 1..={MAX_NODES}", args.nodes);
    }
    let path = args.dir.join(DEVNET_FILE);
    if !path.exists() {
        let file = create(&args.dir, args.nodes, args.mdns, args.slot_ms)?;
        if json {
            return Ok(file);
        }
        println!(
            "created a devnet of {} nodes in {}",
            args.nodes,
            args.dir.display()
        );
        return Ok(file);
    }
    let file: DevnetFile = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )
    .with_context(|| format!("{} is not a devnet description", path.display()))?;
    if file.nodes.len() != args.nodes {
        bail!(
            "{} holds a devnet of {} nodes: pass --nodes {} or use another --dir (or delete it)",
            args.dir.display(),
            file.nodes.len(),
            file.nodes.len()
        );
    }
    if !json {
        println!("reusing the devnet in {}", args.dir.display());
    }
    Ok(file)
}

/// A running node process.
struct NodeProcess {
    index: usize,
    child: Child,
}

/// Sends SIGTERM to every node still running, waits for them, kills the stragglers.
fn stop_all(nodes: &mut [NodeProcess]) {
    for node in nodes.iter_mut() {
        if matches!(node.child.try_wait(), Ok(None)) {
            // `kill` is in every Linux base system; failure means the process is gone.
            let _ = Command::new("kill")
                .args(["-TERM", &node.child.id().to_string()])
                .status();
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for node in nodes.iter_mut() {
        loop {
            match node.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("node {} did not stop in time: killing it", node.index);
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(SUPERVISE_INTERVAL),
            }
        }
    }
}

/// Whether the node's API answers `GET /health` with 200.
async fn healthy(api: SocketAddr) -> bool {
    crate::client::call::<serde_json::Value>(&api.to_string(), hyper::Method::GET, "/health", None)
        .await
        .is_ok()
}

/// Waits until every node in `nodes` serves its API (or one exits, or [`START_TIMEOUT`]).
async fn wait_healthy_all(procs: &mut [NodeProcess], nodes: &[DevnetNode]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    for (node, proc) in nodes.iter().zip(procs.iter_mut()) {
        while !healthy(node.api).await {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!(
                    "node {} exited ({status}) while starting: see {}",
                    proc.index,
                    node.data_dir.join("node.log").display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not serve its API within {START_TIMEOUT:?}: see {}",
                    proc.index,
                    node.data_dir.join("node.log").display()
                );
            }
            tokio::time::sleep(SUPERVISE_INTERVAL).await;
        }
    }
    Ok(())
}

/// The devnet as `--json` prints it: devnet.json's content with each node's index and log.
fn json_view(args: &DevnetArgs, file: &DevnetFile) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = file
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            serde_json::json!({
                "index": i,
                "peer_id": node.peer_id,
                "p2p": node.p2p,
                "api": node.api,
                "data_dir": node.data_dir,
                "log": node.data_dir.join("node.log"),
            })
        })
        .collect();
    serde_json::json!({
        "network": file.network,
        "devnet_file": args.dir.join(DEVNET_FILE),
        "dashboard": file.nodes.first().map(|n| format!("http://{}/", n.api)),
        "nodes": nodes,
    })
}

/// `playergold devnet`.
pub(crate) fn run(args: DevnetArgs, json: bool) -> anyhow::Result<()> {
    let file = load_or_create(&args, json)?;
    if args.init_only {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json_view(&args, &file))?
            );
        } else {
            println!("wrote {}", args.dir.join(DEVNET_FILE).display());
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the playergold binary itself")?;
    let n = u32::try_from(file.nodes.len()).unwrap_or(u32::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut procs = Vec::with_capacity(file.nodes.len());
    for (i, node) in file.nodes.iter().enumerate() {
        let log_path = node.data_dir.join("node.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node").arg("--data-dir").arg(&node.data_dir);
        // Spread R tx/s: the first R mod N nodes take one more.
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let tps = args.tps / n + u32::from(index < args.tps % n);
        if tps > 0 {
            cmd.args(["--tps", &tps.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {i}"))?;
        procs.push(NodeProcess { index: i, child });
        if i == 0 {
            // Everyone bootstraps from node 0: let it listen before the others dial it, so
            // nobody starts with a failed bootstrap dial and its backoff.
            let ready = runtime.block_on(wait_healthy_all(&mut procs[..1], &file.nodes[..1]));
            if let Err(e) = ready {
                stop_all(&mut procs);
                return Err(e);
            }
        }
    }
    let result = runtime.block_on(supervise(&args, &file, &mut procs, json));
    stop_all(&mut procs);
    if json {
        let reason = match &result {
            Ok(reason) => (*reason).to_string(),
            Err(e) => format!("{e:#}"),
        };
        println!(
            "{}",
            serde_json::json!({ "event": "stopped", "reason": reason })
        );
    } else {
        println!("devnet stopped");
    }
    result.map(drop)
}

/// Waits for every node to serve, prints where they are, then watches them until a signal,
/// `--seconds`, or a node dies. Returns why it stopped.
async fn supervise(
    args: &DevnetArgs,
    file: &DevnetFile,
    procs: &mut [NodeProcess],
    json: bool,
) -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    wait_healthy_all(procs, &file.nodes).await?;
    let stopping = |reason: &'static str| {
        if !json {
            println!("stopping the devnet ({reason})");
        }
        Ok(reason)
    };
    if json {
        // serde_json sorts keys: `event` ("running", like "stopped" after it) lands among them.
        let mut running = json_view(args, file);
        running["event"] = "running".into();
        println!("{running}");
    } else {
        print_running(args, file);
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        tokio::select! {
            _ = int.recv() => return stopping("SIGINT"),
            _ = term.recv() => return stopping("SIGTERM"),
            _ = tick.tick() => {}
        }
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            return stopping("--seconds elapsed");
        }
        for proc in procs.iter_mut() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!(
                    "node {} exited unexpectedly ({status}): see {}",
                    proc.index,
                    file.nodes
                        .get(proc.index)
                        .map(|n| n.data_dir.join("node.log").display().to_string())
                        .unwrap_or_default()
                );
            }
        }
    }
}

/// The running devnet for a person: each node's API, PeerId and log, and the dashboard.
fn print_running(args: &DevnetArgs, file: &DevnetFile) {
    println!(
        "devnet of {} nodes running (network {}):",
        file.nodes.len(),
        file.network
    );
    for (i, node) in file.nodes.iter().enumerate() {
        println!(
            "  node-{i}  api http://{}  peer {}  log {}",
            node.api,
            node.peer_id,
            node.data_dir.join("node.log").display()
        );
    }
    if let Some(first) = file.nodes.first() {
        println!("dashboard http://{}/", first.api);
    }
    println!(
        "nodes are described in {}; Ctrl-C stops them all",
        args.dir.join(DEVNET_FILE).display()
    );
}
