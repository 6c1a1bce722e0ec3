//! mDNS between real hosts: six network namespaces on one bridge (no uplink), one node in each
//! with no bootstrap and no manual peer, and every node connects to others through mDNS alone,
//! all six joined into one network (usually a full mesh).
//!
//! How nodes run inside a namespace: the test re-executes its own binary under
//! `ip netns exec <ns>` with [`CHILD_ENV`] set, selecting this same test with `--exact`; in
//! that role the test function runs one node instead (its own tokio runtime) and reports on
//! stdout. A separate process per namespace needs no `setns` (which would need `unsafe`, and
//! this workspace forbids it) and keeps each node's sockets in its namespace for good.
//!
//! Topology, all of it inside namespaces created here (the host's own network is untouched):
//!
//! ```text
//!   ns pgm<tag>-hub:  br0 (bridge, no address)
//!                      ├── veth ── ns pgm<tag>-0: 10.77.0.10/24
//!                      ├── veth ── ns pgm<tag>-1: 10.77.0.11/24
//!                      └── ...     ns pgm<tag>-5: 10.77.0.15/24
//! ```
//!
//! Deleting a namespace deletes its interfaces, so the [`Namespaces`] guard removing the
//! namespaces (also when the test fails) removes everything. `<tag>` is unique per run, so
//! parallel runs do not clash; the addresses live only inside each run's namespaces.
//!
//! Needs root and `ip` (iproute2); CI runs as root. Without them the test fails with a clear
//! message rather than passing without having run.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use playergold_net::netns::{Attach, Namespaces, ip, is_root};
use playergold_net::testnet::{TestNode, quic_addr};
use playergold_net::{NetworkConfig, NetworkName};

/// Hosts (namespaces) in the test: the issue asks for at least six.
const NODES: usize = 6;

/// Set (to the node's index) when this binary runs as a node inside a namespace.
const CHILD_ENV: &str = "PLAYERGOLD_NET_NETNS_NODE";

/// Prefix of the lines a node prints for the test to read.
const REPORT: &str = "PGNODE";

/// Test nodes each node must be connected to, found through mDNS alone.
const MIN_MDNS_PEERS: usize = 2;

/// Bound for all nodes to find each other; mDNS probes within the first second or two.
const WAIT: Duration = Duration::from_secs(60);

/// This test's name as libtest knows it (without the binary's crate name).
fn test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::six_namespaces_on_a_bridge_find_each_other_through_mdns_alone")
}

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + u8::try_from(i).expect("few nodes"))
}

/// The node processes; dropping stops them (ours, by their own pid). A node also stops by
/// itself when its stdin closes, should this process die without running drops.
struct Children(Vec<(Child, Option<ChildStdin>)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (child, stdin) in &mut self.0 {
            drop(stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Six node namespaces on one bridge, each with a route for mDNS's multicast group.
fn create_namespaces() -> Result<Namespaces, String> {
    let attach: Vec<Attach> = (0..NODES)
        .map(|i| Attach {
            bridge: "br0",
            address: node_ip(i),
        })
        .collect();
    let namespaces = Namespaces::create("pgm", &["br0"], &attach)?;
    for ns in namespaces.nodes() {
        // mDNS sends to 224.0.0.251; with no default route the kernel needs this one.
        ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
    }
    Ok(namespaces)
}

#[test]
fn six_namespaces_on_a_bridge_find_each_other_through_mdns_alone() {
    if let Ok(index) = std::env::var(CHILD_ENV) {
        run_node(index.parse().expect("node index"));
        return;
    }
    crate::init_tracing();
    let _turn = crate::NETWORK_TESTS.blocking_lock();
    assert!(
        is_root(),
        "this test creates network namespaces and must run as root (CI does): \
         run `sudo -E cargo test -p playergold-net --test it mdns`"
    );
    let namespaces = create_namespaces().unwrap_or_else(|e| panic!("netns setup: {e}"));
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.to_str().expect("utf-8 path");
    let name = test_name();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Children(Vec::new());
    for (i, ns) in namespaces.nodes().iter().enumerate() {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, exe, &name, "--exact", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, i.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node process starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print `test <name> ... ` on the same line first.
                if let Some(at) = line.find(REPORT) {
                    let _ = tx.send((i, line[at + REPORT.len()..].trim().to_owned()));
                }
            }
            let _ = tx.send((i, "exited".to_owned()));
        });
        children.0.push((child, stdin));
    }
    drop(tx);

    // Each node reports `id <peer-id>` once, then `peers <id,id,...>` on every change.
    let deadline = Instant::now() + WAIT;
    let mut ids: HashMap<usize, String> = HashMap::new();
    let mut peers: HashMap<usize, HashSet<String>> = HashMap::new();
    // Every node found others through mDNS alone: each holds at least `MIN_MDNS_PEERS` of the
    // test's nodes, and the connections join all of them into one network. (Usually they form a
    // full mesh within a second; a full mesh is not what the issue asks, and a node whose first
    // dials fail waits out its backoff.)
    let joined = |ids: &HashMap<usize, String>, peers: &HashMap<usize, HashSet<String>>| {
        if ids.len() != NODES {
            return false;
        }
        let index: HashMap<&String, usize> = ids.iter().map(|(i, id)| (id, *i)).collect();
        let enough = (0..NODES).all(|i| {
            peers.get(&i).is_some_and(|p| {
                p.len() >= MIN_MDNS_PEERS && p.iter().all(|id| index.contains_key(id))
            })
        });
        let mut reached = HashSet::from([0usize]);
        let mut frontier = vec![0usize];
        while let Some(i) = frontier.pop() {
            for id in peers.get(&i).into_iter().flatten() {
                if let Some(&j) = index.get(id)
                    && reached.insert(j)
                {
                    frontier.push(j);
                }
            }
        }
        enough && reached.len() == NODES
    };
    while !joined(&ids, &peers) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, report) = match rx.recv_timeout(left) {
            Ok(msg) => msg,
            Err(_) => panic!(
                "nodes did not all find each other within {WAIT:?}; ids {ids:?}, peers {peers:?}"
            ),
        };
        if let Some(id) = report.strip_prefix("id ") {
            ids.insert(i, id.to_owned());
        } else if let Some(list) = report.strip_prefix("peers") {
            let set = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            peers.insert(i, set);
        } else if report == "exited" {
            panic!("node {i} exited early (its stderr is above)");
        }
    }
    let mesh = (0..NODES).all(|i| peers.get(&i).is_some_and(|p| p.len() == NODES - 1));
    eprintln!("{NODES} nodes in {NODES} namespaces joined through mDNS (full mesh: {mesh})");
    drop(children);
    drop(namespaces);
}

/// One node inside a namespace: mDNS on, no bootstrap, no manual peer, defaults otherwise
/// (the DHT runs in `Auto` mode, so a client: it plays no part here). Reports its id and every
/// change of its peer set on stdout; exits when stdin closes.
fn run_node(index: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut cfg = NetworkConfig::new(NetworkName::new("netnstest").expect("valid name"));
        cfg.listen_addrs = vec![quic_addr(node_ip(index))];
        assert!(cfg.mdns && cfg.bootstrap.is_empty() && cfg.persistent_peers.is_empty());
        let node = TestNode::spawn_fresh(cfg).await.expect("node starts");
        let mut events = node.handle.subscribe();
        println!("{REPORT} id {}", node.peer_id());
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            // Blocks until the test closes our stdin (or dies).
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = stop_tx.send(());
        });
        let mut reported: Option<Vec<String>> = None;
        loop {
            let mut current: Vec<String> = node
                .handle
                .peers()
                .await
                .expect("peers")
                .into_iter()
                .map(|p| p.peer.to_string())
                .collect();
            current.sort();
            if reported.as_ref() != Some(&current) {
                println!("{REPORT} peers {}", current.join(","));
                reported = Some(current);
            }
            // Re-check the peer set after every event (a lagging receiver re-checks too).
            tokio::select! {
                _ = &mut stop_rx => break,
                event = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                        break;
                    }
                }
            }
        }
        node.stop().await;
    });
}
