//! A 6/4 partition of ten real `playergold` nodes, each in its own network namespace, made by
//! taking a link down, then healed by bringing it up.
//!
//! Topology, all of it inside namespaces created here (the host's own network is untouched):
//!
//! ```text
//!   ns pgp<tag>-hub:  br0 ─ x0 ══ veth ══ x1 ─ br1          (`ip link set x0 down` splits)
//!                      ├─ veth ─ ns pgp<tag>-0: 10.78.0.10   ├─ veth ─ ns pgp<tag>-6: 10.78.0.16
//!                      ├─ ...                                ├─ ...
//!                      └─ veth ─ ns pgp<tag>-5: 10.78.0.15   └─ veth ─ ns pgp<tag>-9: 10.78.0.19
//! ```
//!
//! `playergold devnet --init-only` writes the keys, the shared genesis (all ten validators) and
//! the configs; the test rewrites each config to listen (QUIC only: a dead path closes its
//! connections after QUIC's 10 s idle timeout, where TCP would wait for the 35 s heartbeat) and
//! serve the API on the namespace's address, with node 0 as the bootstrap node and every node
//! wanting all nine others (`min_peers = 9`). Each node runs under `ip netns exec`.
//!
//! The test reaches each API through a small proxy in the node's namespace: this same test
//! binary, re-executed under `ip netns exec` with [`PROXY_ENV`] set, reads a path per line on
//! stdin and answers with one `PGAPI <code> <body>` line (a separate process per namespace
//! needs no `setns`, which would need `unsafe`).
//!
//! Needs root and `ip` (iproute2); CI runs as root. Without them the test fails with a clear
//! message rather than passing without having run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use playergold_net::netns::{Attach, Namespaces, ip, is_root};

use crate::{RunningNode, run_ok};

/// Nodes (and namespaces) in the test.
const NODES: usize = 10;
/// Nodes on the first bridge; the rest are the minority.
const MAJORITY: usize = 6;
/// P2p port inside every namespace.
const P2P_PORT: u16 = 7000;
/// API port inside every namespace.
const API_PORT: u16 = 8080;
/// Set (to the API address) when this binary runs as an API proxy inside a namespace.
const PROXY_ENV: &str = "PLAYERGOLD_NODE_NETNS_PROXY";
/// Prefix of the proxy's answer lines.
const ANSWER: &str = "PGAPI ";
/// Bound for the nodes to start, mesh and agree before the split (ten processes on a loaded
/// 2-core machine).
const SETUP: Duration = Duration::from_secs(60);
/// Bound for the minority to notice the split: QUIC's 10 s idle timeout closes the connections
/// across it, then the detector's 30 s `low_peers_grace`.
const NOTICE: Duration = Duration::from_secs(75);
/// Bound for the sides to reconnect and converge after the heal: the detector redials the
/// address book every 10 s while below `min_peers`, then sync reorganises the minority.
const CONVERGE: Duration = Duration::from_secs(60);

fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, 10 + u8::try_from(i).expect("few nodes"))
}

/// Peers node `i` has during the split: the rest of its side.
fn side_peers(i: usize) -> usize {
    if i < MAJORITY {
        MAJORITY - 1
    } else {
        NODES - MAJORITY - 1
    }
}

fn api_addr(i: usize) -> SocketAddr {
    SocketAddr::new(node_ip(i).into(), API_PORT)
}

/// This test's name as libtest knows it (without the binary's crate name).
fn test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::ten_nodes_split_six_four_by_a_link_converge_on_the_heavier_side")
}

/// The hub with its two bridges joined by the `x0`/`x1` veth pair, and the node namespaces:
/// the first `MAJORITY` on `br0`, the rest on `br1`.
fn create_namespaces() -> Result<Namespaces, String> {
    let attach: Vec<Attach> = (0..NODES)
        .map(|i| Attach {
            bridge: if i < MAJORITY { "br0" } else { "br1" },
            address: node_ip(i),
        })
        .collect();
    let namespaces = Namespaces::create("pgp", &["br0", "br1"], &attach)?;
    let hub = namespaces.hub();
    ip(&[
        "-n", hub, "link", "add", "x0", "type", "veth", "peer", "name", "x1",
    ])?;
    ip(&["-n", hub, "link", "set", "x0", "master", "br0", "up"])?;
    ip(&["-n", hub, "link", "set", "x1", "master", "br1", "up"])?;
    Ok(namespaces)
}

/// Takes the link between the bridges down (`false`) or up (`true`).
fn set_link(namespaces: &Namespaces, up: bool) {
    let state = if up { "up" } else { "down" };
    ip(&["-n", namespaces.hub(), "link", "set", "x0", state]).unwrap_or_else(|e| panic!("{e}"));
}

/// An API proxy in one namespace; dropping it closes its stdin (it exits) and reaps it.
struct Proxy {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proxy {
    fn spawn(namespace: &str, api: SocketAddr) -> Proxy {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(exe)
            .args([
                &test_name(),
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(PROXY_ENV, api.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("proxy starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Proxy {
            child,
            stdin,
            stdout,
        }
    }

    /// `GET path` on the node's API: the status code (0 when the API did not answer) and the
    /// JSON body (`null` when there is none).
    fn get(&mut self, path: &str) -> (u16, serde_json::Value) {
        let stdin = self.stdin.as_mut().expect("proxy stdin");
        writeln!(stdin, "{path}").expect("write to the proxy");
        stdin.flush().expect("flush the proxy");
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("read the proxy");
            assert!(n > 0, "the API proxy exited (its stderr is above)");
            // libtest may print `test <name> ... ` on the same line first.
            if let Some(at) = line.find(ANSWER) {
                let answer = line[at + ANSWER.len()..].trim();
                let (code, body) = answer.split_once(' ').unwrap_or((answer, ""));
                let code = code.parse().expect("proxy status code");
                let body = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
                return (code, body);
            }
        }
    }

    /// `GET /api/v1/status`, or `None` while the API does not answer.
    fn status(&mut self) -> Option<serde_json::Value> {
        match self.get("/api/v1/status") {
            (200, status) => Some(status),
            _ => None,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's role: answers `GET <line>` on `api` for every line of stdin until it closes.
fn run_proxy(api: &str) {
    let api: SocketAddr = api.parse().expect("proxy API address");
    for path in std::io::stdin().lock().lines().map_while(Result::ok) {
        let answer = match get(api, path.trim()) {
            Ok((code, body)) => format!("{code} {}", body.replace(['\r', '\n'], " ")),
            Err(e) => format!("0 {}", serde_json::Value::String(e)),
        };
        println!("{ANSWER}{answer}");
    }
}

/// One HTTP/1.0 GET (the server closes the connection after answering).
fn get(api: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&api, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {api}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("not an HTTP response")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status code")?;
    Ok((code, body.to_string()))
}

/// Node `i`'s config: p2p (QUIC) and API on its namespace address, node 0 as bootstrap.
fn write_config(data_dir: &Path, i: usize, bootstrap: &str) {
    let mut text = format!(
        "listen = [\"/ip4/{ip}/udp/{P2P_PORT}/quic-v1\"]\n\
         api = \"{api}\"\n\
         mdns = false\n\
         dht = true\n\
         allow_local_addresses = true\n\
         min_peers = {min}\n\
         capabilities = [\"validator\"]\n",
        ip = node_ip(i),
        api = api_addr(i),
        min = NODES - 1,
    );
    if i > 0 {
        text.push_str(&format!("bootstrap = [\"{bootstrap}\"]\n"));
    }
    std::fs::write(data_dir.join("config.toml"), text).expect("write config.toml");
}

/// Polls every node in `group` (a round of requests, then 200 ms) until `check` holds for one
/// round of their statuses (in `group` order); returns that round.
fn wait_group(
    proxies: &mut [Proxy],
    group: &[usize],
    timeout: Duration,
    what: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses: Vec<Option<serde_json::Value>> =
            group.iter().map(|&i| proxies[i].status()).collect();
        let round: Vec<serde_json::Value> = statuses.iter().flatten().cloned().collect();
        if round.len() == group.len() && check(&round) {
            return round;
        }
        if Instant::now() >= deadline {
            let brief: Vec<String> = group
                .iter()
                .zip(&statuses)
                .map(|(i, s)| match s {
                    Some(s) => format!(
                        "node {i}: peers {} height {} state {} hash {}",
                        s["peer_count"], s["best_height"], s["network_state"], s["best_hash"]
                    ),
                    None => format!("node {i}: no answer"),
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}:\n{}",
                brief.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// [`wait_group`] with a check that each node's status must pass on its own.
fn wait_all(
    proxies: &mut [Proxy],
    group: &[usize],
    timeout: Duration,
    what: &str,
    check: impl Fn(usize, &serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    wait_group(proxies, group, timeout, what, |round| {
        group.iter().zip(round).all(|(&i, s)| check(i, s))
    })
}

fn height(status: &serde_json::Value) -> u64 {
    status["best_height"].as_u64().expect("best_height")
}

#[test]
fn ten_nodes_split_six_four_by_a_link_converge_on_the_heavier_side() {
    if let Ok(api) = std::env::var(PROXY_ENV) {
        run_proxy(&api);
        return;
    }
    let _turn = crate::many_processes();
    assert!(
        is_root(),
        "this test creates network namespaces and must run as root (CI does): \
         run `sudo -E cargo test -p playergold-node --test it partition`"
    );
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let net_dir = dir.path().join("devnet");
    run_ok(
        crate::playergold()
            .args([
                "devnet",
                "--nodes",
                "10",
                "--init-only",
                "--slot-ms",
                "1000",
            ])
            .arg("--dir")
            .arg(&net_dir),
    );
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(net_dir.join("devnet.json")).expect("devnet.json"),
    )
    .expect("devnet.json is JSON");
    let nodes = file["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), NODES);
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n["peer_id"].as_str().expect("peer_id").to_string())
        .collect();
    let data_dir =
        |i: usize| std::path::PathBuf::from(nodes[i]["data_dir"].as_str().expect("data_dir"));
    let bootstrap = format!("/ip4/{}/udp/{P2P_PORT}/quic-v1/p2p/{}", node_ip(0), ids[0]);
    for i in 0..NODES {
        write_config(&data_dir(i), i, &bootstrap);
    }

    let namespaces = create_namespaces().unwrap_or_else(|e| panic!("netns setup: {e}"));
    let exe = env!("CARGO_BIN_EXE_playergold");
    // Node 0 (the bootstrap node) first, so nobody starts with a failed bootstrap dial.
    let mut running: Vec<RunningNode> = Vec::new();
    for (i, ns) in namespaces.nodes().iter().enumerate() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, exe, "node", "--data-dir"])
            .arg(data_dir(i));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PLAYERGOLD_") {
                cmd.env_remove(name);
            }
        }
        let node = RunningNode::spawn(&mut cmd);
        let api = node.next_line_starting("api listening on ");
        assert_eq!(api.trim(), api_addr(i).to_string());
        running.push(node);
    }
    let mut proxies: Vec<Proxy> = namespaces
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, ns)| Proxy::spawn(ns, api_addr(i)))
        .collect();
    let all: Vec<usize> = (0..NODES).collect();
    let majority: Vec<usize> = (0..MAJORITY).collect();
    let minority: Vec<usize> = (MAJORITY..NODES).collect();

    // A full mesh, healthy, on one chain a few blocks long.
    let before = wait_all(&mut proxies, &all, SETUP, "a healthy full mesh", |_, s| {
        s["peer_count"] == NODES - 1 && s["network_state"] == "healthy" && height(s) >= 3
    });
    let split_height = before.iter().map(height).max().expect("ten nodes");
    eprintln!(
        "mesh of {NODES} at height {split_height} after {:?}",
        started.elapsed()
    );

    // Split 6/4.
    set_link(&namespaces, false);
    let split_at = Instant::now();
    wait_all(
        &mut proxies,
        &all,
        NOTICE,
        "the sides to lose each other",
        |i, s| s["peer_count"] == side_peers(i),
    );
    let noticed = wait_all(
        &mut proxies,
        &minority,
        NOTICE,
        "the minority to see the partition",
        |_, s| s["network_state"] == "partitioned" || s["network_state"] == "degraded",
    );
    eprintln!(
        "minority states {:?} {:?} after the split",
        noticed
            .iter()
            .map(|s| s["network_state"].to_string())
            .collect::<Vec<_>>(),
        split_at.elapsed()
    );
    // Both sides keep producing, each on its own branch.
    let major = wait_all(
        &mut proxies,
        &majority,
        SETUP,
        "the majority to produce",
        |_, s| height(s) >= split_height + 3,
    );
    let minor = wait_all(
        &mut proxies,
        &minority,
        SETUP,
        "the minority to produce",
        |_, s| height(s) >= split_height + 2,
    );
    // The heavier side's tip as the heal begins: a block every node must end up holding at its
    // height, on its best chain.
    let heavy = &major[0];
    let (heavy_height, heavy_hash) = (height(heavy), heavy["best_hash"].clone());
    let light = &minor[0];
    let (light_height, light_hash) = (height(light), light["best_hash"].clone());
    assert!(
        heavy_height > light_height,
        "six validators out-produce four: {heavy_height} vs {light_height}"
    );
    let (code, block) = proxies[MAJORITY].get(&format!("/api/v1/blocks/{heavy_height}"));
    assert!(
        code == 404 || block["hash"] != heavy_hash,
        "the minority cannot hold the majority's tip during the split: {code} {block}"
    );

    // Heal.
    set_link(&namespaces, true);
    let healed_at = Instant::now();
    wait_group(
        &mut proxies,
        &all,
        CONVERGE,
        "one best block everywhere",
        |round| {
            round
                .iter()
                .all(|s| s["best_hash"] == round[0]["best_hash"])
        },
    );
    eprintln!("converged {:?} after the heal", healed_at.elapsed());
    for (i, proxy) in proxies.iter_mut().enumerate() {
        let (code, block) = proxy.get(&format!("/api/v1/blocks/{heavy_height}"));
        assert_eq!(code, 200, "node {i}: {block}");
        assert_eq!(
            block["hash"], heavy_hash,
            "node {i} follows the heavier side's branch"
        );
        let (code, block) = proxy.get(&format!("/api/v1/blocks/{light_height}"));
        assert_eq!(code, 200, "node {i}: {block}");
        assert_ne!(
            block["hash"], light_hash,
            "node {i} dropped the minority's branch"
        );
        let (code, bans) = proxy.get("/api/v1/bans");
        assert_eq!(code, 200);
        assert_eq!(bans, serde_json::json!([]), "node {i} banned nobody");
    }
    // Both sides saw warning signs (the majority has five peers of the nine it wants); with
    // everyone back, every node returns to healthy once the detector's heal hold has passed.
    wait_all(&mut proxies, &all, CONVERGE, "healthy again", |_, s| {
        s["network_state"] == "healthy" && s["peer_count"] == NODES - 1
    });
    eprintln!("partition test took {:?}", started.elapsed());
    drop(proxies);
    drop(running);
    drop(namespaces);
}
