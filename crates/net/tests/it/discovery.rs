//! Discovery on in-process networks (mDNS off): DHT and peer exchange from a single bootstrap
//! node, capability lookups through DHT provider records with the AI-peer quota, identify
//! carrying capabilities, and the peer exchange rate limit under a flood.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::select_all;
use libp2p::identity::Keypair;
use playergold_net::framing::{read_frame, write_frame};
use playergold_net::peer_exchange::{
    AddrResponse, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, peer_exchange_protocol,
};
use playergold_net::testnet::{TestNode, node_ip, test_config, wait_all};
use playergold_net::{Capabilities, MemoryStore, NetworkConfig, NetworkEvent, PeerId, PeerInfo};
use tokio::time::Instant;

/// Generous bound for a network to form on a loaded two-core CI machine.
const SETTLE: Duration = Duration::from_secs(90);

fn config(i: usize, bootstrap: Option<&TestNode>) -> NetworkConfig {
    let mut cfg = test_config(node_ip(u8::try_from(i).expect("small index")));
    cfg.bootstrap = bootstrap.map(TestNode::dial_addr).into_iter().collect();
    cfg
}

/// Starts `n` nodes; node 0 has no bootstrap, every other node only node 0. `tweak` adjusts
/// each config (and may return a key to use).
async fn star(
    n: usize,
    mut tweak: impl FnMut(usize, &mut NetworkConfig) -> Option<Keypair>,
) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    for i in 0..n {
        let mut cfg = config(i, nodes.first());
        let key = tweak(i, &mut cfg).unwrap_or_else(Keypair::generate_ed25519);
        nodes.push(
            TestNode::spawn(cfg, key, MemoryStore::new())
                .await
                .expect("node starts"),
        );
    }
    nodes
}

async fn stop_all(nodes: Vec<TestNode>) {
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_bootstrapped_from_node_zero_reach_eight_peers() {
    crate::init_tracing();
    let _turn = crate::network_test_turn().await;
    const NODES: usize = 30;
    const TARGET: usize = 8;
    let nodes = star(NODES, |_, _| None).await;
    let started = Instant::now();
    let zero = nodes[0].peer_id();
    let all = wait_all(&nodes, SETTLE, |_, p| {
        p.len() >= TARGET && p.iter().filter(|i| i.peer != zero).count() >= TARGET - 1
    })
    .await
    .expect("every node has at least 8 peers besides the bootstrap node");
    let counts: Vec<usize> = all.iter().map(Vec::len).collect();
    eprintln!(
        "30 nodes at >= 8 peers in {:?}: {counts:?}",
        started.elapsed()
    );
    // The DHT did its part: every node's routing table knows more than the bootstrap node.
    for (i, node) in nodes.iter().enumerate() {
        let status = node.handle.dht_status().await.expect("status");
        assert!(status.enabled && status.server, "node {i}: {status:?}");
        assert!(status.routing_table >= TARGET, "node {i}: {status:?}");
    }
    stop_all(nodes).await;
}

fn ai_peers(peers: &[PeerInfo]) -> usize {
    peers
        .iter()
        .filter(|i| i.capabilities.contains(Capabilities::AI_COMPUTE))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_lookup_finds_ai_nodes_the_querier_never_connected_to() {
    crate::init_tracing();
    let _turn = crate::network_test_turn().await;
    const NODES: usize = 20;
    const AI: [usize; 3] = [4, 9, 14];
    const QUERIER: usize = NODES - 1;
    let ai_keys: Vec<Keypair> = AI.iter().map(|_| Keypair::generate_ed25519()).collect();
    let ai_ids: Vec<PeerId> = ai_keys.iter().map(|k| k.public().to_peer_id()).collect();
    let nodes = star(NODES, |i, cfg| {
        if let Some(k) = AI.iter().position(|a| *a == i) {
            cfg.capabilities = Capabilities::AI_COMPUTE;
            return Some(ai_keys[k].clone());
        }
        if i == QUERIER {
            // The querier may never connect to the AI nodes, in either direction, so whatever
            // it finds comes from provider records stored at other nodes.
            cfg.deny_peers = ai_ids.clone();
            cfg.ai_peer_slots = 0;
        }
        None
    })
    .await;

    // Every other node fills its AI quota (2) through provider lookups: the AI nodes announce
    // themselves, the others find and dial them.
    let started = Instant::now();
    wait_all(&nodes, SETTLE, |i, p| i == QUERIER || ai_peers(p) >= 2)
        .await
        .expect("every node but the querier has 2 AI-capable peers");
    eprintln!("AI quotas filled in {:?}", started.elapsed());

    // The querier finds all three. Lookups are retried (each bounded) until the announcements
    // have spread; between tries it waits for network activity, never for a fixed time.
    let querier = &nodes[QUERIER];
    let expected: HashSet<PeerId> = ai_ids.iter().copied().collect();
    let deadline = Instant::now() + SETTLE;
    let mut events: Vec<_> = nodes.iter().map(|n| n.handle.subscribe()).collect();
    let found = loop {
        let found = querier
            .handle
            .find_peers_with(Capabilities::AI_COMPUTE)
            .await
            .expect("lookup");
        let ids: HashSet<PeerId> = found.iter().map(|p| p.peer).collect();
        if ids == expected || Instant::now() >= deadline {
            break found;
        }
        let next = select_all(events.iter_mut().map(|r| Box::pin(r.recv())));
        let _ = tokio::time::timeout(Duration::from_secs(1), next).await;
    };
    let ids: HashSet<PeerId> = found.iter().map(|p| p.peer).collect();
    assert_eq!(ids, expected, "exactly the three AI nodes");
    for p in &found {
        assert!(!p.connected, "the querier is not connected to {}", p.peer);
        assert!(p.capabilities.contains(Capabilities::AI_COMPUTE));
    }
    let connected: Vec<PeerId> = querier
        .handle
        .peers()
        .await
        .expect("peers")
        .into_iter()
        .map(|i| i.peer)
        .collect();
    assert!(connected.iter().all(|p| !expected.contains(p)));
    assert!(!connected.is_empty(), "the querier is part of the network");

    // A capability nobody announces is answered from connected peers only, and malformed asks
    // are refused.
    assert!(
        querier
            .handle
            .find_peers_with(Capabilities::ARCHIVE)
            .await
            .expect("lookup")
            .is_empty()
    );
    assert!(
        querier
            .handle
            .find_peers_with(Capabilities::AI_COMPUTE.with(Capabilities::ARCHIVE))
            .await
            .is_err()
    );
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_tells_peers_our_capabilities() {
    crate::init_tracing();
    let mut cfg = test_config(node_ip(60));
    cfg.capabilities = Capabilities::AI_COMPUTE.with(Capabilities::ARCHIVE);
    cfg.min_peers = 0;
    let ai = TestNode::spawn_fresh(cfg).await.expect("starts");
    let mut cfg = test_config(node_ip(61));
    cfg.min_peers = 0;
    let plain = TestNode::spawn_fresh(cfg).await.expect("starts");
    let mut events = plain.handle.subscribe();
    plain
        .handle
        .connect(ai.dial_addr())
        .await
        .expect("connects");
    let deadline = Instant::now() + Duration::from_secs(10);
    let caps = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(NetworkEvent::PeerIdentified {
                peer,
                capabilities,
                agent_version,
            })) if peer == ai.peer_id() => {
                assert!(agent_version.starts_with("playergold/"), "{agent_version}");
                break capabilities;
            }
            Ok(_) => {}
            Err(_) => panic!("no PeerIdentified event within 10 s"),
        }
    };
    assert_eq!(caps, Capabilities::AI_COMPUTE.with(Capabilities::ARCHIVE));
    let info = plain.handle.peers().await.expect("peers");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].capabilities, caps);
    ai.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_answers_a_flood_at_the_configured_rate_only() {
    crate::init_tracing();
    const REQUESTS: usize = 1000;
    let quiet = |n: u8| {
        let mut cfg = test_config(node_ip(n));
        cfg.min_peers = 0;
        cfg.dht = false;
        cfg
    };
    let target = TestNode::spawn_fresh(quiet(70))
        .await
        .expect("target starts");
    // The target dials two peers, so it has verified addresses to share.
    let mut helpers = Vec::new();
    for n in 71..=72 {
        let helper = TestNode::spawn_fresh(quiet(n))
            .await
            .expect("helper starts");
        target
            .handle
            .connect(helper.dial_addr())
            .await
            .expect("target dials out");
        helpers.push(helper);
    }
    let flooder = TestNode::spawn_fresh(quiet(73))
        .await
        .expect("flooder starts");
    flooder
        .handle
        .connect(target.dial_addr())
        .await
        .expect("flooder connects");
    let protocol = peer_exchange_protocol(&target.config.network).expect("protocol");
    let mut control = flooder.handle.streams();

    let started = Instant::now();
    let mut answered = 0;
    let mut empty = 0;
    let mut first_answer = None;
    for _ in 0..REQUESTS {
        let mut stream = control
            .open_stream(target.peer_id(), protocol.clone())
            .await
            .expect("stream opens");
        write_frame(&mut stream, &[], MAX_REQUEST_FRAME)
            .await
            .expect("request sent");
        let bytes = read_frame(&mut stream, MAX_RESPONSE_FRAME)
            .await
            .expect("answer read");
        let response = AddrResponse::decode(&bytes).expect("valid answer");
        if response.0.is_empty() {
            empty += 1;
        } else {
            answered += 1;
            first_answer.get_or_insert(response);
        }
    }
    let elapsed = started.elapsed();
    let cfg = &target.config;
    // The bucket starts full (burst), gains one token per interval, and the flooder's own
    // connection manager asked once when it connected.
    let allowed = cfg.addr_response_burst as usize
        + (elapsed.as_secs_f64() / cfg.addr_response_interval.as_secs_f64()).ceil() as usize
        + 1;
    eprintln!(
        "{REQUESTS} requests in {elapsed:?}: {answered} answered, {empty} empty (allowed {allowed})"
    );
    assert!(answered >= 1, "the burst is answered");
    assert!(
        answered <= allowed,
        "{answered} answers exceed the rate limit ({allowed})"
    );
    assert_eq!(answered + empty, REQUESTS);
    // Answers carry only verified addresses: the helpers the target dialled.
    let helper_ids: HashSet<PeerId> = helpers.iter().map(TestNode::peer_id).collect();
    let shared: HashSet<PeerId> = first_answer
        .expect("answered")
        .0
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(shared, helper_ids);

    for node in helpers {
        node.stop().await;
    }
    flooder.stop().await;
    target.stop().await;
}
