//! AI challenges: the hop budget on a line, and a solution settled by a quorum of verdicts.

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use playergold_primitives::{Keypair, TimestampMs};
use playergold_protocol::Capabilities;
use playergold_protocol::ai::{Challenge, HashPuzzle, Solution, SolutionVerifier, Verdict};
use playergold_protocol::relay::PropagationConfig;
use playergold_services::RelayServiceEvent;

use crate::support::{Devnet, init_tracing, spawn_nodes, wire};

const SETUP: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(15);

fn challenge(issuer: &Keypair, nonce: u64, hops: u8) -> Challenge {
    Challenge::new(
        issuer,
        nonce,
        HashPuzzle::KIND,
        vec![4],
        TimestampMs(u64::MAX),
        hops,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_with_two_hops_goes_no_further_than_two_hops() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig {
        max_hops: 2,
        ..PropagationConfig::default()
    };
    let mut line = spawn_nodes(&devnet, 60, 5, &config, Capabilities::AI_COMPUTE).await;
    wire(&mut line, &[(0, 1), (1, 2), (2, 3), (3, 4)], SETUP).await;
    let issuer = Keypair::from_secret(&[42; 32]);

    let near = challenge(&issuer, 1, config.max_hops);
    line[0]
        .relay
        .broadcast_challenge(near.clone())
        .await
        .expect("broadcast");
    for (hop, node) in line.iter_mut().enumerate().skip(1).take(2) {
        let event = node
            .wait_event(WAIT, "the two-hop challenge", |e| {
                matches!(e, RelayServiceEvent::ChallengeReceived { challenge, .. } if challenge.id() == near.id())
            })
            .await;
        let RelayServiceEvent::ChallengeReceived { challenge, .. } = event else {
            unreachable!("matched above")
        };
        assert_eq!(
            challenge.hops_left as usize,
            3 - hop,
            "one hop spent per link"
        );
    }
    // A second challenge with a larger budget, sent after: links keep order, so once it reaches
    // the end of the line, the first would have reached node 3 before it if node 2 had passed it on.
    let far = challenge(&issuer, 2, 4);
    line[0]
        .relay
        .broadcast_challenge(far.clone())
        .await
        .expect("broadcast");
    line[4]
        .wait_event(WAIT, "the four-hop challenge", |e| {
            matches!(e, RelayServiceEvent::ChallengeReceived { challenge, .. } if challenge.id() == far.id())
        })
        .await;
    for i in [3, 4] {
        let seen: HashSet<_> = line[i]
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                RelayServiceEvent::ChallengeReceived { challenge, .. } => Some(challenge.id()),
                _ => None,
            })
            .collect();
        assert!(
            !seen.contains(&near.id()),
            "node {i} got the two-hop challenge"
        );
    }
    join_all(line.into_iter().map(|n| n.stop())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_solution_is_verified_by_ai_peers_and_settled_by_a_quorum() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig {
        // Every other ai-compute peer of the solver validates: the test knows who to wait for.
        solution_validators: 4,
        ..PropagationConfig::default()
    };
    let mut nodes = spawn_nodes(&devnet, 80, 5, &config, Capabilities::AI_COMPUTE).await;
    // A full mesh: the solver's validators are its direct ai-compute peers.
    let edges: Vec<_> = (0..5)
        .flat_map(|a| (a + 1..5).map(move |b| (a, b)))
        .collect();
    wire(&mut nodes, &edges, SETUP).await;
    for node in &nodes {
        let peers = node.relay.peers().await.expect("peers");
        assert!(
            peers
                .iter()
                .all(|p| p.capabilities.contains(Capabilities::AI_COMPUTE)),
            "capabilities arrive with the hello"
        );
    }
    let keys: Vec<Keypair> = (0..5u8)
        .map(|i| Keypair::from_secret(&[50 + i; 32]))
        .collect();

    let c = challenge(&keys[0], 7, config.max_hops);
    nodes[0]
        .relay
        .broadcast_challenge(c.clone())
        .await
        .expect("broadcast");
    nodes[1]
        .wait_event(WAIT, "the challenge", |e| {
            matches!(e, RelayServiceEvent::ChallengeReceived { challenge, .. } if challenge.id() == c.id())
        })
        .await;
    let result = HashPuzzle.solve(&c).expect("solvable");
    let solution = Solution::new(&keys[1], c.id(), result);
    nodes[1]
        .relay
        .submit_solution(solution.clone())
        .await
        .expect("submitted");

    // Every validator (the four others) verifies and signs a verdict.
    for i in [0, 2, 3, 4] {
        let event = nodes[i]
            .wait_event(WAIT, "a solution to verify", |e| {
                matches!(e, RelayServiceEvent::SolutionToVerify { .. })
            })
            .await;
        let RelayServiceEvent::SolutionToVerify {
            challenge,
            solution,
        } = event
        else {
            unreachable!("matched above")
        };
        let valid = HashPuzzle.verify(&challenge, &solution);
        assert!(valid, "node {i}: the puzzle answer checks");
        nodes[i]
            .relay
            .submit_verdict(Verdict::new(&keys[i], &solution, valid))
            .await
            .expect("verdict");
    }
    let settled = nodes[0]
        .wait_event(WAIT, "the settlement", |e| {
            matches!(e, RelayServiceEvent::SolutionSettled(_))
        })
        .await;
    let RelayServiceEvent::SolutionSettled(s) = settled else {
        unreachable!("matched above")
    };
    assert_eq!(s.solution, solution.id());
    assert_eq!(s.solver, keys[1].public());
    assert!(s.valid);
    assert!(s.verdicts.len() >= config.verdict_quorum);
    join_all(nodes.into_iter().map(|n| n.stop())).await;
}
