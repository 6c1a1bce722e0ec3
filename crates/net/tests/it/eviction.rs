//! Eviction: 40 inbound connections from one IP group do not push out protected peers.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::future::join_all;
use playergold_net::policy::Direction;
use playergold_net::testnet::{TestNode, node_ip, quic_addr, test_config};
use playergold_net::{PeerId, Score};

const ATTACKERS: u8 = 40;
/// Bound for each wait; the flood settles once probation (`PROBATION_PERIOD`, 10 s) is over.
const WAIT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_from_one_ip_group_does_not_evict_protected_peers() {
    crate::init_tracing();
    let _turn = crate::network_test_turn().await;
    let mut cfg = test_config(node_ip(100));
    cfg.min_peers = 2;
    cfg.outbound_reserve = 2;
    cfg.max_peers = 12; // 10 inbound slots
    cfg.max_pending_incoming = 64;
    let target = TestNode::spawn_fresh(cfg).await.expect("target starts");

    let quiet = |n: u8| {
        let mut cfg = test_config(node_ip(n));
        cfg.min_peers = 0; // only the test dials
        cfg
    };
    // Two outbound peers of the target.
    let mut outbound = Vec::new();
    for n in 101..=102 {
        let node = TestNode::spawn_fresh(quiet(n))
            .await
            .expect("outbound peer starts");
        target
            .handle
            .connect(node.dial_addr())
            .await
            .expect("target dials out");
        outbound.push(node);
    }
    // Four honest inbound peers, each in its own /16.
    let mut honest = Vec::new();
    for n in 103..=106 {
        let node = TestNode::spawn_fresh(quiet(n))
            .await
            .expect("honest peer starts");
        node.handle
            .connect(target.dial_addr())
            .await
            .expect("honest peer connects");
        honest.push(node);
    }
    let protected: Vec<PeerId> = outbound
        .iter()
        .chain(&honest)
        .map(TestNode::peer_id)
        .collect();
    target
        .wait_peers(WAIT, |p| p.len() == protected.len())
        .await
        .expect("all protected peers in");
    target
        .handle
        .mark_useful(honest[0].peer_id())
        .await
        .expect("mark useful");
    target
        .handle
        .set_score(honest[1].peer_id(), Score(100))
        .await
        .expect("score");

    // 40 attackers, all in 127.66.0.0/16, connect at once.
    let mut attackers = Vec::new();
    for i in 1..=ATTACKERS {
        let mut cfg = test_config(Ipv4Addr::new(127, 66, 0, i));
        cfg.listen_addrs = vec![quic_addr(Ipv4Addr::new(127, 66, 0, i))];
        cfg.min_peers = 0;
        attackers.push(TestNode::spawn_fresh(cfg).await.expect("attacker starts"));
    }
    let dial = target.dial_addr();
    let results = join_all(attackers.iter().map(|a| a.handle.connect(dial.clone()))).await;
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    eprintln!("{accepted} of {ATTACKERS} attacker connections were accepted at first");

    // Once the dust settles the target is within its limits and every protected peer is there.
    let peers = target
        .wait_peers(WAIT, |p| {
            p.len() <= 12
                && p.iter()
                    .filter(|i| i.direction == Direction::Inbound)
                    .count()
                    <= 10
        })
        .await
        .expect("target back within limits");
    let present: Vec<PeerId> = peers.iter().map(|i| i.peer).collect();
    for p in &protected {
        assert!(present.contains(p), "protected peer {p} was evicted");
    }
    let attackers_left = peers.len() - protected.len();
    assert!(
        attackers_left <= 6,
        "attackers hold at most the free inbound slots: {attackers_left}"
    );
    assert!(
        accepted > attackers_left,
        "the flood evicted its own connections"
    );

    for node in attackers.into_iter().chain(outbound).chain(honest) {
        node.stop().await;
    }
    target.stop().await;
}
