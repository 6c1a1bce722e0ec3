//! The propagation scenarios, on the simulator.

use std::time::Duration;

use playergold_primitives::Keypair;
use playergold_primitives::{Amount, TimestampMs};
use playergold_protocol::Capabilities;
use playergold_protocol::ai::{Challenge, HashPuzzle, Solution, SolutionVerifier, Verdict};
use playergold_protocol::relay::{
    Fanout, Offence, PropagationConfig, RelayEngine, RelayEvent, RelayMessage,
};

use crate::sim::{FakeHost, Sim};

const HOP: Duration = Duration::from_millis(20);

fn net(n: usize, config: PropagationConfig) -> Sim {
    let mut sim = Sim::new(n, config);
    sim.random_overlay(8.min(n - 1), HOP, 7);
    sim.start_engines(|_| Capabilities::NONE);
    sim
}

#[test]
fn a_transaction_reaches_all_20_nodes() {
    let mut sim = net(20, PropagationConfig::default());
    let tx = sim.tx(1);
    let id = tx.id();
    sim.submit_tx(0, tx);
    sim.run(Duration::from_secs(5));
    for (i, node) in sim.nodes.iter().enumerate() {
        assert!(node.host.mempool.contains_key(&id), "node {i} lacks the tx");
    }
}

#[test]
fn a_block_is_rebuilt_from_mempools_without_a_full_block_transfer() {
    let mut sim = net(20, PropagationConfig::default());
    let txs: Vec<_> = (0..200).map(|i| sim.tx(i)).collect();
    for (i, tx) in txs.iter().enumerate() {
        sim.submit_tx(i % 20, tx.clone());
    }
    sim.run(Duration::from_secs(5));
    assert!(
        sim.nodes.iter().all(|n| n.host.mempool.len() == 200),
        "txs spread first"
    );
    let before = sim.bytes.clone();
    let block = sim.produce(3, txs);
    sim.run(Duration::from_secs(5));
    for (i, node) in sim.nodes.iter().enumerate() {
        assert!(
            node.host.blocks.contains_key(&block.hash()),
            "node {i} lacks the block"
        );
    }
    assert_eq!(sim.bytes.get("block"), None, "no full block was sent");
    assert_eq!(
        sim.bytes.get("blocktxns"),
        before.get("blocktxns"),
        "nothing was missing"
    );
    let rebuilt: u64 = sim
        .nodes
        .iter()
        .map(|n| n.engine.metrics().compact_rebuilt)
        .sum();
    assert_eq!(rebuilt, 19);
    // Compact bytes per receiver vs the full block.
    let full = playergold_primitives::codec::encoded_len(&block);
    let compact = playergold_primitives::codec::encoded_len(
        &playergold_protocol::relay::CompactBlock::of(&block),
    );
    assert!(compact * 20 < full, "compact {compact} B vs full {full} B");
}

#[test]
fn missing_transactions_of_a_compact_block_are_fetched_individually() {
    let mut sim = net(10, PropagationConfig::default());
    let shared: Vec<_> = (0..20).map(|i| sim.tx(i)).collect();
    for tx in &shared {
        sim.submit_tx(0, tx.clone());
    }
    sim.run(Duration::from_secs(5));
    // Two txs only the producer has: inserted into its host without relaying.
    let private: Vec<_> = (100..102).map(|i| sim.tx(i)).collect();
    for tx in &private {
        sim.nodes[0].host.mempool.insert(tx.id(), tx.clone());
    }
    let mut all = shared.clone();
    all.extend(private);
    let block = sim.produce(0, all);
    sim.run(Duration::from_secs(5));
    assert!(
        sim.nodes
            .iter()
            .all(|n| n.host.blocks.contains_key(&block.hash()))
    );
    assert_eq!(sim.bytes.get("block"), None);
    assert!(
        sim.bytes.contains_key("blocktxns"),
        "missing txs were requested"
    );
}

#[test]
fn a_transaction_with_a_bad_signature_reaches_no_second_node() {
    let mut sim = net(10, PropagationConfig::default());
    let mut bad = sim.tx(5);
    bad.amount = Amount(1_000_000);
    // Node 9 is the attacker; it sends straight to node 0.
    sim.inject(9, 0, RelayMessage::Transactions(vec![bad.clone()]));
    sim.run(Duration::from_secs(2));
    for node in &sim.nodes {
        assert!(!node.host.mempool.contains_key(&bad.id()));
    }
    assert!(!sim.bytes.contains_key("transactions") && !sim.bytes.contains_key("announce"));
    assert!(sim.nodes[0].events.contains(&RelayEvent::Penalty {
        peer: 9,
        offence: Offence::InvalidTransaction
    }));
}

#[test]
fn a_lost_reply_is_recovered_from_another_announcer() {
    // Announce-only gossip so the victim learns of the tx by announcements.
    let config = PropagationConfig {
        gossip_factor: Fanout::Fixed(0),
        ..PropagationConfig::default()
    };
    let mut sim = Sim::new(3, config);
    // 0 = origin, 1 = second announcer, 2 = victim; every reply from 0 to 2 is lost.
    sim.connect(0, 1, HOP);
    sim.connect(0, 2, HOP);
    sim.connect(1, 2, HOP * 3);
    sim.start_engines(|_| Capabilities::NONE);
    sim.filter = Some(Box::new(|from, to, msg| {
        !(from == 0 && to == 2 && matches!(msg, RelayMessage::Transactions(_)))
    }));
    let tx = sim.tx(3);
    sim.submit_tx(0, tx.clone());
    sim.run(Duration::from_secs(5));
    assert!(sim.nodes[2].host.mempool.contains_key(&tx.id()));
    assert!(sim.nodes[2].engine.metrics().retries >= 1);
    assert!(sim.nodes[2].events.contains(&RelayEvent::Penalty {
        peer: 0,
        offence: Offence::RequestTimeout
    }));
}

#[test]
fn a_challenge_with_max_hops_2_goes_no_further_than_2_hops() {
    let mut sim = Sim::new(5, PropagationConfig::default());
    for i in 0..4 {
        sim.connect(i, i + 1, HOP);
    }
    sim.start_engines(|_| Capabilities::AI_COMPUTE);
    let issuer = Keypair::from_secret(&[1; 32]);
    let c = Challenge::new(
        &issuer,
        1,
        HashPuzzle::KIND,
        vec![4],
        TimestampMs(u64::MAX),
        2,
    );
    let now = sim.now;
    sim.nodes[0].engine.broadcast_challenge(now, c);
    sim.run(Duration::from_secs(2));
    let got = |sim: &Sim, i: usize| {
        sim.nodes[i]
            .events
            .iter()
            .any(|e| matches!(e, RelayEvent::ChallengeReceived { .. }))
    };
    assert!(got(&sim, 1) && got(&sim, 2));
    assert!(!got(&sim, 3) && !got(&sim, 4));
}

#[test]
fn a_solution_is_validated_by_peers_and_settles_at_the_issuer() {
    let config = PropagationConfig {
        verdict_quorum: 2,
        solution_validators: 3,
        ..PropagationConfig::default()
    };
    let mut sim = Sim::new(6, config);
    sim.random_overlay(4, HOP, 3);
    sim.start_engines(|_| Capabilities::AI_COMPUTE);
    let keys: Vec<Keypair> = (0..6u8)
        .map(|i| Keypair::from_secret(&[i + 50; 32]))
        .collect();
    let c = Challenge::new(
        &keys[0],
        9,
        HashPuzzle::KIND,
        vec![6],
        TimestampMs(u64::MAX),
        7,
    );
    let now = sim.now;
    sim.nodes[0].engine.broadcast_challenge(now, c.clone());
    sim.run(Duration::from_secs(2));
    // Node 4 solves; validators answer with verdicts (the node loop's job, done by hand here).
    let result = HashPuzzle.solve(&c).expect("solvable");
    sim.nodes[4]
        .engine
        .submit_solution(Solution::new(&keys[4], c.id(), result));
    for _ in 0..5 {
        sim.run(Duration::from_millis(500));
        for (i, key) in keys.iter().enumerate() {
            let asks: Vec<_> = sim.nodes[i]
                .events
                .iter()
                .filter_map(|e| match e {
                    RelayEvent::SolutionToVerify {
                        challenge,
                        solution,
                    } => Some((challenge.clone(), solution.clone())),
                    _ => None,
                })
                .collect();
            sim.nodes[i]
                .events
                .retain(|e| !matches!(e, RelayEvent::SolutionToVerify { .. }));
            for (challenge, solution) in asks {
                let ok = HashPuzzle.verify(&challenge, &solution);
                sim.nodes[i]
                    .engine
                    .submit_verdict(Verdict::new(key, &solution, ok));
            }
        }
    }
    sim.run(Duration::from_secs(2));
    let settled = sim.nodes[0].events.iter().find_map(|e| match e {
        RelayEvent::SolutionSettled(s) => Some((s.valid, s.verdicts.len(), s.solver)),
        _ => None,
    });
    let (valid, count, solver) = settled.expect("issuer saw the solution settle");
    assert!(valid && count >= 2 && solver == keys[4].public());
}

#[test]
fn the_queue_toward_a_peer_that_never_reads_stays_bounded() {
    let config = PropagationConfig {
        max_peer_queue_bytes: 64 * 1024,
        ..PropagationConfig::default()
    };
    let sim = Sim::new(1, PropagationConfig::default());
    let mut engine: RelayEngine<usize> = RelayEngine::new(config, 1);
    let mut host = FakeHost::for_tests(&sim);
    engine.add_peer(1, Capabilities::NONE);
    let now = sim.now;
    let mut slow = false;
    for i in 0..5_000 {
        let _ = engine.submit_transaction(now, sim.tx(i), &mut host);
        engine.handle_timeout(now + Duration::from_secs(1));
        assert!(engine.queued_bytes(&1) <= 64 * 1024);
        while let Some(e) = engine.poll_event() {
            slow |= e == RelayEvent::SlowPeer(1);
        }
    }
    assert!(slow, "the peer was flagged slow");
    assert_eq!(engine.queued_bytes(&1), 0, "its queue was dropped");
}
