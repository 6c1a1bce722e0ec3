//! Two nodes over TCP and over QUIC; identity and network checks.

use std::time::Duration;

use playergold_net::policy::Direction;
use playergold_net::service::NetworkError;
use playergold_net::testnet::{TestNode, node_ip, tcp_addr, test_config};
use playergold_net::{NetworkEvent, NetworkName, PeerId};

const WAIT: Duration = Duration::from_secs(20);

async fn connect_pair(tcp: bool) {
    crate::init_tracing();
    let mut cfg_a = test_config(node_ip(200));
    let mut cfg_b = test_config(node_ip(201));
    if tcp {
        cfg_a.listen_addrs = vec![tcp_addr(node_ip(200))];
        cfg_b.listen_addrs = vec![tcp_addr(node_ip(201))];
    }
    let a = TestNode::spawn_fresh(cfg_a).await.expect("a starts");
    let b = TestNode::spawn_fresh(cfg_b).await.expect("b starts");
    let proto = if tcp { "/tcp/" } else { "/quic-v1" };
    assert!(
        b.dial_addr().to_string().contains(proto),
        "{}",
        b.dial_addr()
    );

    let mut b_events = b.handle.subscribe();
    let peer = a
        .handle
        .connect(b.dial_addr())
        .await
        .expect("a connects to b");
    assert_eq!(peer, b.peer_id());
    // b sees a as inbound.
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            match b_events.recv().await {
                Ok(NetworkEvent::PeerConnected {
                    peer, direction, ..
                }) if peer == a.peer_id() => return direction,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("b sees the connection");
    assert_eq!(seen, Direction::Inbound);
    let peers = a.handle.peers().await.expect("peers");
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].direction, Direction::Outbound);

    // Heartbeats run: a latency shows up.
    a.wait_peers(WAIT, |p| p.iter().any(|i| i.latency.is_some()))
        .await
        .expect("ping measured");

    a.handle.disconnect(b.peer_id()).await.expect("disconnect");
    a.wait_peers(WAIT, |p| p.is_empty())
        .await
        .expect("disconnected");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_connect_over_tcp_tls13() {
    connect_pair(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_connect_over_quic() {
    connect_pair(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_an_address_that_names_another_peer_id_fails_cleanly() {
    for tcp in [true, false] {
        let mut cfg_b = test_config(node_ip(203));
        if tcp {
            cfg_b.listen_addrs = vec![tcp_addr(node_ip(203))];
        }
        let a = TestNode::spawn_fresh(test_config(node_ip(202)))
            .await
            .expect("a starts");
        let b = TestNode::spawn_fresh(cfg_b).await.expect("b starts");
        let mut wrong = b.listen_addrs[0].clone();
        let impostor = PeerId::random();
        wrong.push(libp2p::multiaddr::Protocol::P2p(impostor));
        let err = a
            .handle
            .connect(wrong)
            .await
            .expect_err("wrong peer id must fail");
        assert!(matches!(err, NetworkError::Dial { .. }), "{err:?}");
        assert!(a.handle.peers().await.expect("peers").is_empty());
        // b survived and still accepts honest connections.
        a.handle
            .connect(b.dial_addr())
            .await
            .expect("honest connect works");
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_different_networks_do_not_stay_connected() {
    let a = TestNode::spawn_fresh(test_config(node_ip(204)))
        .await
        .expect("a starts");
    let mut cfg_b = test_config(node_ip(205));
    cfg_b.network = NetworkName::new("othernet").expect("valid");
    let b = TestNode::spawn_fresh(cfg_b).await.expect("b starts");
    // The TLS connection itself may come up; identify reveals the network and a drops it.
    let _ = a.handle.connect(b.dial_addr()).await;
    a.wait_peers(WAIT, |p| p.is_empty())
        .await
        .expect("a drops the foreign peer");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_peer_is_redialled_after_it_restarts() {
    crate::init_tracing();
    // b comes back on the same TCP port (QUIC would keep the old UDP port while its
    // connections drain).
    let mut cfg_b = test_config(node_ip(207));
    cfg_b.listen_addrs = vec![tcp_addr(node_ip(207))];
    let b = TestNode::spawn_fresh(cfg_b).await.expect("b starts");
    let b_addr = b.dial_addr();
    let mut cfg_a = test_config(node_ip(206));
    cfg_a.min_peers = 0; // no outbound target: only persistence dials
    cfg_a.persistent_peers = vec![b_addr.clone()];
    let a = TestNode::spawn_fresh(cfg_a).await.expect("a starts");
    let peers = a
        .wait_peers(WAIT, |p| p.iter().any(|i| i.peer == b.peer_id()))
        .await
        .expect("a dials b");
    assert!(
        peers
            .iter()
            .all(|i| i.persistent && i.direction == Direction::Outbound)
    );

    let (keypair, store, mut cfg_b) = (b.keypair.clone(), b.store.clone(), b.config.clone());
    let b_id = b.peer_id();
    b.stop().await;
    a.wait_peers(WAIT, |p| p.is_empty())
        .await
        .expect("a notices b is gone");
    cfg_b.listen_addrs = vec![
        b_addr
            .iter()
            .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
            .collect(),
    ];
    let b = TestNode::spawn(cfg_b, keypair, store)
        .await
        .expect("b restarts on the same address");
    a.wait_peers(WAIT, |p| p.iter().any(|i| i.peer == b_id))
        .await
        .expect("a redials its persistent peer");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_listen_port_gives_a_clear_error() {
    for tcp in [true, false] {
        let mut cfg = test_config(node_ip(208));
        if tcp {
            cfg.listen_addrs = vec![tcp_addr(node_ip(208))];
        }
        let first = TestNode::spawn_fresh(cfg.clone())
            .await
            .expect("first node starts");
        cfg.listen_addrs = first.listen_addrs.clone();
        let err = TestNode::spawn_fresh(cfg)
            .await
            .expect_err("the port is taken");
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, NetworkError::Listen { .. }), "{err:?}");
        assert!(
            msg.contains(&first.listen_addrs[0].to_string()) && msg.contains("listen_addrs"),
            "{msg}"
        );
        first.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_lists_refuse_peers_and_networks() {
    let b = TestNode::spawn_fresh(test_config(node_ip(231)))
        .await
        .expect("b starts");
    let c = TestNode::spawn_fresh(test_config(node_ip(232)))
        .await
        .expect("c starts");
    let mut cfg_a = test_config(node_ip(230));
    cfg_a.min_peers = 0;
    cfg_a.deny_peers = vec![b.peer_id()];
    cfg_a.deny_cidrs = vec![format!("{}/16", node_ip(232)).parse().expect("cidr")];
    let a = TestNode::spawn_fresh(cfg_a).await.expect("a starts");

    // a does not dial a denied peer, nor a peer in a denied network.
    let err = a
        .handle
        .connect(b.dial_addr())
        .await
        .expect_err("denied peer");
    assert!(err.to_string().contains("deny list"), "{err}");
    let err = a
        .handle
        .connect(c.dial_addr())
        .await
        .expect_err("denied network");
    assert!(err.to_string().contains("denied network"), "{err}");
    // Nor does it accept them: their connections are refused after the handshake.
    for node in [&b, &c] {
        let _ = node.handle.connect(a.dial_addr()).await;
        node.wait_peers(WAIT, |p| p.is_empty())
            .await
            .expect("refused by a");
    }
    assert!(a.handle.peers().await.expect("peers").is_empty());
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_peers_and_bytes() {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    let b = TestNode::spawn_fresh(test_config(node_ip(241)))
        .await
        .expect("b starts");
    let mut registry = Registry::with_prefix("playergold");
    let (handle, task, metrics) = playergold_net::start_with_metrics(
        test_config(node_ip(240)),
        libp2p::identity::Keypair::generate_ed25519(),
        Box::new(playergold_net::MemoryStore::new()),
        registry.sub_registry_with_prefix("net"),
    )
    .await
    .expect("a starts");
    handle.connect(b.dial_addr()).await.expect("a connects");
    // The gauges are refreshed by the maintenance tick; wait for it (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while metrics.peers_outbound.get() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge never updated"
        );
        tokio::time::sleep(playergold_net::service::MAINTENANCE_INTERVAL).await;
    }
    let mut text = String::new();
    encode(&mut text, &registry).expect("encodes");
    assert!(text.contains("playergold_net_peers_outbound 1"), "{text}");
    assert!(
        text.contains("playergold_net_libp2p_bandwidth_bytes_total"),
        "{text}"
    );
    assert!(
        text.contains("playergold_net_libp2p_swarm_connections_established_total"),
        "{text}"
    );
    handle.shutdown().await.expect("shutdown");
    task.await.expect("task");
    b.stop().await;
}
