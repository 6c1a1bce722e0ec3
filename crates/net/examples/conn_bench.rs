//! Connection benchmark: inbound TLS 1.3 handshakes per second on one node, and resident memory
//! per idle connection with many idle peers.
//!
//! ```text
//! cargo run --release -p playergold-net --features test-utils --example conn_bench -- [PEERS] [SECONDS] [THREADS]
//! ```
//!
//! 1. RSS: a target node listens on 127.0.0.1 over TCP (TLS 1.3 + yamux) and QUIC. A child
//!    process (this binary, re-executed) runs `PEERS` (default 200) client nodes that connect and
//!    stay idle; the target's RSS growth divided by the peer count is the cost of one idle peer.
//!    The child is a separate process so its memory is not counted.
//! 2. Handshakes: `THREADS` (default 4) blocking clients open TCP connections to the target,
//!    negotiate `/tls/1.0.0` and complete a mutual TLS 1.3 handshake with the same rustls
//!    configuration libp2p uses, for `SECONDS` (default 5); the count per second is reported.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use playergold_net::testnet::{TestNode, quic_addr, tcp_addr, test_config};
use playergold_net::{Multiaddr, NetworkConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Client connections started at once by the child: below the target's pending-inbound limit.
const CONNECT_BATCH: usize = 16;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn bench_config(listen: Vec<Multiaddr>, max_peers: usize) -> NetworkConfig {
    let ip = std::net::Ipv4Addr::LOCALHOST;
    let defaults = NetworkConfig::new(test_config(ip).network);
    let mut cfg = test_config(ip);
    cfg.listen_addrs = listen;
    cfg.min_peers = 0;
    cfg.max_peers = max_peers;
    cfg.outbound_reserve = 0;
    cfg.max_inbound_per_ip = max_peers;
    // Production heartbeats: an idle peer costs what it costs in production.
    cfg.heartbeat_interval = defaults.heartbeat_interval;
    cfg.heartbeat_timeout = defaults.heartbeat_timeout;
    // Connections and handshakes only: DHT lookups among the clients would be noise, and the
    // numbers stay comparable with runs from before the DHT existed.
    cfg.dht = false;
    cfg
}

/// Child process: `clients <multiaddr> <count>`; prints `ready <connected>` and idles until
/// stdin closes.
async fn run_clients(target: Multiaddr, count: usize) -> Result<(), BoxError> {
    let quic = target.iter().any(|p| matches!(p, Protocol::QuicV1));
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        // QUIC clients each get their own loopback IP, TCP clients all dial from 127.0.0.1.
        let ip = std::net::Ipv4Addr::new(127, 100 + (i / 250) as u8, (i % 250) as u8 + 1, 1);
        let listen = if quic {
            quic_addr(ip)
        } else {
            tcp_addr(std::net::Ipv4Addr::LOCALHOST)
        };
        nodes.push(TestNode::spawn_fresh(bench_config(vec![listen], 4)).await?);
    }
    let mut connected = 0;
    for batch in nodes.chunks(CONNECT_BATCH) {
        let results = join_all(batch.iter().map(|n| n.handle.connect(target.clone()))).await;
        connected += results.iter().filter(|r| r.is_ok()).count();
    }
    println!("ready {connected}");
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read(&mut [0u8; 1])).await;
    Ok(())
}

async fn measure_rss(target: &TestNode, addr: Multiaddr, peers: usize) -> Result<(), BoxError> {
    let label = if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "QUIC"
    } else {
        "TCP+TLS1.3+yamux"
    };
    let before = rss_kib();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["clients", &addr.to_string(), &peers.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await??;
    let connected: usize = line
        .trim()
        .strip_prefix("ready ")
        .ok_or("child failed")?
        .parse()?;
    let peers_now = target
        .wait_peers(Duration::from_secs(60), |p| p.len() >= connected)
        .await?;
    // Let identify, peer exchange and the first pings run, then measure the idle state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss_kib();
    let per_peer = after.saturating_sub(before) as f64 / peers_now.len().max(1) as f64;
    println!(
        "{label}: {} idle peers, RSS {before} KiB -> {after} KiB: {per_peer:.1} KiB per idle peer",
        peers_now.len()
    );
    drop(child.stdin.take());
    child.wait()?;
    target
        .wait_peers(Duration::from_secs(30), |p| p.is_empty())
        .await?;
    Ok(())
}

fn ms_write(io: &mut impl Write, line: &str) -> std::io::Result<()> {
    let msg = format!("{line}\n");
    // Messages here are shorter than 128 bytes, so the uvarint length is one byte.
    io.write_all(&[msg.len() as u8])?;
    io.write_all(msg.as_bytes())
}

fn ms_read(io: &mut impl Read) -> std::io::Result<()> {
    let mut len = [0u8; 1];
    io.read_exact(&mut len)?;
    io.read_exact(&mut vec![0u8; usize::from(len[0])])
}

/// One inbound TLS 1.3 handshake against the node's TCP listener.
fn handshake(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> Result<(), BoxError> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    ms_write(&mut sock, "/multistream/1.0.0")?;
    ms_write(&mut sock, "/tls/1.0.0")?;
    ms_read(&mut sock)?;
    ms_read(&mut sock)?;
    let mut conn = rustls::ClientConnection::new(cfg.clone(), "l".try_into()?)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err("not TLS 1.3".into());
    }
    Ok(())
}

fn measure_handshakes(addr: SocketAddr, seconds: u64, threads: usize) -> Result<(), BoxError> {
    let cfg = Arc::new(libp2p::tls::make_client_config(
        &Keypair::generate_ed25519(),
        None,
    )?);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (cfg, done, failed, stop) =
                (cfg.clone(), done.clone(), failed.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match handshake(addr, &cfg) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "inbound TLS 1.3 handshakes: {n} in {secs:.1} s = {:.0}/s ({threads} client threads, {} failed; clients share the CPU)",
        n as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

fn tcp_socket(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::from((ip?, port?)))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("clients") {
        let target: Multiaddr = args.get(1).ok_or("missing target")?.parse()?;
        let count: usize = args.get(2).ok_or("missing count")?.parse()?;
        return run_clients(target, count).await;
    }
    let peers: usize = args.first().map_or(Ok(200), |s| s.parse())?;
    let seconds: u64 = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let threads: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;

    let localhost = std::net::Ipv4Addr::LOCALHOST;
    let cfg = bench_config(vec![tcp_addr(localhost), quic_addr(localhost)], peers + 16);
    let target = TestNode::spawn_fresh(cfg).await?;
    let with_id = |a: &Multiaddr| a.clone().with(Protocol::P2p(target.peer_id()));
    let tcp = target
        .listen_addrs
        .iter()
        .find(|a| tcp_socket(a).is_some())
        .ok_or("no TCP listener")?
        .clone();
    let quic = target
        .listen_addrs
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
        .ok_or("no QUIC listener")?
        .clone();
    println!("target {} on {tcp} and {quic}", target.peer_id());

    measure_rss(&target, with_id(&tcp), peers).await?;
    measure_rss(&target, with_id(&quic), peers).await?;
    let socket = tcp_socket(&tcp).ok_or("no TCP socket")?;
    tokio::task::spawn_blocking(move || measure_handshakes(socket, seconds, threads)).await??;
    target.stop().await;
    Ok(())
}
