//! Attacks on whole nodes (relay, sync and reputation wired as the node binary wires them) over
//! real TLS connections on 127.0.0.0/8: a network where six of twenty nodes flood forgeries,
//! junk beside an honest peer's requests, oversized frames on relay and sync, and a ban that
//! outlives a restart. Attackers are real network nodes whose relay (or sync) streams the test
//! writes by hand.

use std::collections::HashSet;
use std::time::Duration;

use futures::AsyncWriteExt;
use futures::future::join_all;
use libp2p::{PeerId, Stream};
use playergold_chain::{Blockchain, ChainBackend};
use playergold_net::NetworkEvent;
use playergold_net::NetworkName;
use playergold_net::framing::{FrameHeader, read_frame, write_frame};
use playergold_net::testnet::TEST_NETWORK;
use playergold_primitives::{
    Amount, Block, BlockHash, Height, Keypair, TimestampMs, Transaction, TxId, codec,
};
use playergold_protocol::relay::{CompactBlock, InvItem, Offence, PropagationConfig, RelayMessage};
use playergold_protocol::reputation::Reason;
use playergold_services::relay::{MAX_FRAME_SIZE, MessageKind, relay_protocol};
use playergold_services::sync::{MAX_REQUEST_FRAME, sync_protocol};
use playergold_services::{RelayServiceEvent, SyncServiceConfig};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fullnode::{FullNode, RssPeak, alone, rss_bytes, runtime};
use crate::support::{Devnet, RawPeer, init_tracing, recv, send, tx};

/// Setup deadlines (connections, stream handshakes) on a loaded 2-core machine.
const SETUP: Duration = Duration::from_secs(30);
/// Deadline of an outcome (a ban, a block everywhere).
const WAIT: Duration = Duration::from_secs(30);

/// The devnet's slot length and the slot of its genesis block.
fn slots(devnet: &Devnet) -> (u64, u64) {
    let slot_ms = devnet.genesis.slot_duration_ms;
    (
        slot_ms,
        devnet.genesis.block().header.timestamp_ms.0 / slot_ms,
    )
}

/// A block on `parent` in `slot`, signed by `key`.
fn build_block(
    devnet: &Devnet,
    parent: &Block,
    slot: u64,
    key: &Keypair,
    txs: Vec<Transaction>,
) -> Block {
    let (slot_ms, _) = slots(devnet);
    Block::build(
        key,
        parent.hash(),
        Height(parent.header.height.0 + 1),
        TimestampMs(slot * slot_ms),
        txs,
    )
}

/// The next valid block on `chain`'s tip: the slot after the tip's, signed by that slot's
/// validator. Timestamps stay far in the past (the devnet genesis is years old).
fn next_block(devnet: &Devnet, chain: &Blockchain, txs: Vec<Transaction>) -> Block {
    let tip = chain.tip();
    let parent = chain.block(&tip.hash).expect("store").expect("tip block");
    let (slot_ms, _) = slots(devnet);
    let slot = parent.header.timestamp_ms.0 / slot_ms + 1;
    let key = &devnet.validators[(slot % devnet.validators.len() as u64) as usize];
    build_block(devnet, &parent, slot, key, txs)
}

/// A block on genesis in `slot` whose header fails the check: even `n` carries a signature that
/// is not over its fields (bad signature), odd `n` is signed by a validator whose slot it is not
/// (bad producer). Both are fatal for their sender.
fn forged_block(devnet: &Devnet, slot: u64, n: usize) -> Block {
    let genesis = devnet.genesis.block();
    let count = devnet.validators.len() as u64;
    let right = &devnet.validators[(slot % count) as usize];
    let wrong = &devnet.validators[((slot + 1) % count) as usize];
    if n.is_multiple_of(2) {
        let mut block = build_block(devnet, &genesis, slot, right, Vec::new());
        block.header.signature = build_block(devnet, &genesis, slot + 1, right, Vec::new())
            .header
            .signature;
        block
    } else {
        build_block(devnet, &genesis, slot, wrong, Vec::new())
    }
}

/// Copies of one signed transaction with other amounts: each has its own id and a signature
/// that does not cover it. One signature for any number of forgeries.
fn forgeries(base: &Transaction, first: u64, n: usize) -> Vec<Transaction> {
    (0..n as u64)
        .map(|i| {
            let mut t = base.clone();
            t.amount = Amount(1_000_000 + first + i);
            t
        })
        .collect()
}

/// Reads and drops every frame `node` sends on `stream` until it ends, so the peer behind it is
/// a reader (a slow-peer drop would hide what a test is after).
async fn drain(mut stream: Stream) {
    while read_frame(&mut stream, MAX_FRAME_SIZE).await.is_ok() {}
}

/// Writes `frames` until one fails (the node dropped us); returns how many were written, and the
/// stream (dropping it would end our side of the stream early).
async fn flood(mut stream: Stream, frames: Vec<RelayMessage>) -> (usize, Stream) {
    let mut sent = 0;
    for msg in &frames {
        let bytes = codec::encode(msg);
        let write = write_frame(&mut stream, &bytes, MAX_FRAME_SIZE);
        match tokio::time::timeout(WAIT, write).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (sent, stream)
}

/// Offences that mean "this peer sent something invalid", as opposed to honest trouble
/// (timeouts, slowness, unrequested duplicates).
fn sent_invalid(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::Relay(
            Offence::InvalidTransaction
                | Offence::InvalidHeader
                | Offence::InvalidBlockBody
                | Offence::InvalidAiMessage
        ) | Reason::InvalidBlock
            | Reason::InvalidHeaders
            | Reason::MalformedFrame
    )
}

/// Honest nodes of the flooded network.
const HONEST: usize = 14;
/// Attacking nodes.
const ATTACKERS: usize = 6;
/// Honest nodes each attacker connects to and floods: 24 attacks, every honest node hit.
const TARGETS: usize = 4;
/// Honest links: node `i` to `i + c (mod 14)` for each `c`, six honest peers per node.
const CHORDS: [usize; 3] = [1, 2, 5];
/// The honest nodes' `min_peers` (the partition detector's warning line): four of their six
/// honest links. Every honest node must keep at least this many honest connections.
const MIN_PEERS: usize = 4;
/// Most frames one attacker writes to one victim; it stops at the first write that fails.
const FLOOD_FRAMES: usize = 60;
/// Forged transactions per `Transactions` frame.
const FORGED_PER_FRAME: usize = 4;
/// Valid blocks honest nodes produce while the attack runs.
const VALID_BLOCKS: usize = 3;
/// First node index of the flooded network (20 indexes, so 127.201.0.1 to 127.220.0.1).
const NET_INDEX: u8 = 200;

/// Who attacker `a` floods.
fn targets(a: usize) -> Vec<usize> {
    (0..TARGETS).map(|t| (a * TARGETS + t) % HONEST).collect()
}

/// Whether honest nodes `i` and `j` are linked.
fn linked(i: usize, j: usize) -> bool {
    CHORDS
        .iter()
        .any(|c| (i + c) % HONEST == j || (j + c) % HONEST == i)
}

/// What the attackers send, and what must never be accepted.
struct Forgeries {
    /// Per attacker, per target: the frames.
    frames: Vec<Vec<Vec<RelayMessage>>>,
    txs: Vec<TxId>,
    blocks: Vec<BlockHash>,
}

/// Attackers `a % 3 == 0` send forged transactions, `1` forged blocks (compact and full, bad
/// signature and bad producer), `2` both in turn. The first frame of a block attacker is a copy
/// of `first_valid` with a signature that does not verify: the same hash as the real block, so
/// a node must refuse the copy and still take the real one.
fn forge(devnet: &Devnet, first_valid: &Block) -> Forgeries {
    let (_, genesis_slot) = slots(devnet);
    let base = tx(9_999, 0);
    let mut out = Forgeries {
        frames: Vec::new(),
        txs: Vec::new(),
        blocks: Vec::new(),
    };
    let mut copy = first_valid.clone();
    copy.header.signature = forged_block(devnet, genesis_slot + 1, 0).header.signature;
    for a in 0..ATTACKERS {
        let mut per_target = Vec::new();
        for t in 0..TARGETS {
            let mut frames = Vec::new();
            for k in 0..FLOOD_FRAMES {
                let n = (a * TARGETS + t) * FLOOD_FRAMES + k;
                let send_txs = match a % 3 {
                    0 => true,
                    1 => false,
                    _ => k % 2 == 0,
                };
                if a % 3 == 1 && k == 0 {
                    frames.push(RelayMessage::CompactBlock(CompactBlock::of(&copy)));
                } else if send_txs {
                    let txs = forgeries(&base, (n * FORGED_PER_FRAME) as u64, FORGED_PER_FRAME);
                    out.txs.extend(txs.iter().map(Transaction::id));
                    frames.push(RelayMessage::Transactions(txs));
                } else {
                    // Slots far from the honest chain's, so no forgery shares a valid block's hash.
                    let block = forged_block(devnet, genesis_slot + 1_000 + n as u64, k);
                    out.blocks.push(block.hash());
                    frames.push(if k % 4 < 2 {
                        RelayMessage::CompactBlock(CompactBlock::of(&block))
                    } else {
                        RelayMessage::Block(block)
                    });
                }
            }
            per_target.push(frames);
        }
        out.frames.push(per_target);
    }
    out
}

/// Twenty nodes, six of them attackers flooding forged transactions and blocks at four honest
/// nodes each while the honest nodes produce blocks: no honest node takes or relays a forgery,
/// every attacker is banned by every node it hit (and only attackers are banned), every honest
/// node keeps its honest links, and all converge on the last valid block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_of_twenty_nodes_flood_forgeries_and_are_banned_by_everyone_they_hit() {
    init_tracing();
    let devnet = Devnet::new();
    let mut sync = SyncServiceConfig::default();
    sync.partition.min_peers = MIN_PEERS;
    let mut nodes = Vec::new();
    for i in 0..HONEST {
        let index = NET_INDEX + i as u8;
        nodes.push(
            FullNode::spawn(&devnet, index, PropagationConfig::default(), sync.clone()).await,
        );
    }
    let honest: Vec<PeerId> = nodes.iter().map(FullNode::peer_id).collect();
    for i in 0..HONEST {
        for c in CHORDS {
            nodes[i].node.connect(&nodes[(i + c) % HONEST].node).await;
        }
    }
    let degree = |i: usize| (0..HONEST).filter(|j| linked(i, *j)).count();
    for (i, node) in nodes.iter_mut().enumerate() {
        node.node.wait_relay_peers(degree(i), SETUP).await;
    }

    let mut attackers = Vec::new();
    let mut streams = Vec::new();
    let mut drains = JoinSet::new();
    for a in 0..ATTACKERS {
        let mut raw = RawPeer::spawn(&devnet, NET_INDEX + (HONEST + a) as u8).await;
        let mut ours = Vec::new();
        for v in targets(a) {
            let (to, from) = raw.connect(&nodes[v].node).await;
            drains.spawn(drain(from));
            ours.push(to);
        }
        streams.push(ours);
        attackers.push(raw);
    }
    let attacker_ids: Vec<PeerId> = attackers.iter().map(RawPeer::peer_id).collect();
    let hit_by = |v: usize| -> Vec<PeerId> {
        (0..ATTACKERS)
            .filter(|a| targets(*a).contains(&v))
            .map(|a| attacker_ids[a])
            .collect()
    };
    for (v, node) in nodes.iter_mut().enumerate() {
        assert!(!hit_by(v).is_empty(), "every honest node is attacked");
        node.node
            .wait_relay_peers(degree(v) + hit_by(v).len(), SETUP)
            .await;
    }

    // The first valid block is known in advance, so block attackers can forge its signature.
    let first_valid = next_block(&devnet, &nodes[0].node.chain, vec![tx(30_000, 0)]);
    let forged = forge(&devnet, &first_valid);
    let mut floods = JoinSet::new();
    for (a, ours) in streams.into_iter().enumerate() {
        for (t, stream) in ours.into_iter().enumerate() {
            floods.spawn(flood(stream, forged.frames[a][t].clone()));
        }
    }

    // Honest production during the attack: each block reaches every honest node.
    let mut last = first_valid.hash();
    for k in 0..VALID_BLOCKS {
        let producer = k * 5 % HONEST;
        let block = if k == 0 {
            first_valid.clone()
        } else {
            next_block(
                &devnet,
                &nodes[producer].node.chain,
                vec![tx(30_000 + k as u16, 0)],
            )
        };
        last = block.hash();
        nodes[producer]
            .node
            .relay
            .propagate_block(block)
            .await
            .expect("a valid block imports");
        for node in &nodes {
            let chain = node.node.chain.clone();
            node.wait_for(WAIT, "the valid block", || {
                let chain = chain.clone();
                async move { chain.tip().hash == last }
            })
            .await;
        }
    }
    let mut sent = 0;
    let deadline = Instant::now() + WAIT;
    while let Some(done) = tokio::time::timeout_at(deadline, floods.join_next())
        .await
        .expect("every flood ends: its victim drops it, or it runs out of frames")
    {
        let (n, _stream) = done.expect("flood task");
        assert!(n >= 1, "every attacker got at least one frame out");
        sent += n;
    }

    for (v, node) in nodes.iter().enumerate() {
        for attacker in hit_by(v) {
            node.wait_banned(attacker, WAIT).await;
        }
    }

    let mut invalid_offences = 0;
    for (v, node) in nodes.iter_mut().enumerate() {
        let attackers_here = hit_by(v);
        let offences: Vec<(PeerId, Reason)> = node
            .node
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                RelayServiceEvent::Offence { peer, reason } => Some((peer, reason)),
                _ => None,
            })
            .chain(node.sync_penalties())
            .collect();
        for (peer, reason) in &offences {
            if honest.contains(peer) {
                assert!(
                    !sent_invalid(*reason),
                    "node {v}: honest peer {peer} sent something invalid ({reason:?})"
                );
            } else {
                assert!(
                    attackers_here.contains(peer),
                    "node {v}: offence by a stranger"
                );
            }
        }
        for attacker in &attackers_here {
            let n = offences
                .iter()
                .filter(|(p, r)| p == attacker && sent_invalid(*r))
                .count();
            assert!(
                n >= 1,
                "node {v} saw attacker {attacker} send something invalid"
            );
            invalid_offences += n;
        }

        let mut banned: Vec<PeerId> = node
            .reputation
            .bans()
            .await
            .expect("reputation runs")
            .into_iter()
            .map(|b| b.peer)
            .collect();
        banned.sort();
        let mut expected = attackers_here.clone();
        expected.sort();
        assert_eq!(banned, expected, "node {v} banned exactly its attackers");

        let connected = node.connected().await;
        let honest_links: HashSet<PeerId> = connected
            .iter()
            .filter(|p| honest.contains(p))
            .copied()
            .collect();
        let wired: HashSet<PeerId> = (0..HONEST)
            .filter(|j| linked(v, *j))
            .map(|j| honest[j])
            .collect();
        assert_eq!(honest_links, wired, "node {v} kept every honest link");
        assert!(honest_links.len() >= MIN_PEERS);
        assert!(
            connected.iter().all(|p| honest.contains(p)),
            "node {v} still connected to an attacker"
        );

        assert_eq!(node.node.chain.tip().hash, last);
        for id in &forged.txs {
            assert!(
                !node.node.chain.mempool_contains(id),
                "node {v} took a forged tx"
            );
        }
        for hash in &forged.blocks {
            assert!(
                !node.node.chain.has_block(hash),
                "node {v} took a forged block"
            );
        }
        let m = node.node.relay.metrics().await.expect("metrics");
        assert_eq!(
            m.engine.tx.received, 0,
            "node {v}: no transaction from a peer was valid"
        );
        assert!(
            m.engine.block.received <= VALID_BLOCKS as u64,
            "node {v}: only the valid blocks count as received: {:?}",
            m.engine
        );
    }
    eprintln!(
        "flooded network: {sent} attack frames written, {invalid_offences} invalid items seen by \
         their victims, {} bans",
        ATTACKERS * TARGETS
    );

    drains.abort_all();
    join_all(attackers.into_iter().map(|a| a.net.stop())).await;
    join_all(nodes.into_iter().map(FullNode::stop)).await;
}

/// Junk frames one peer sends in the junk test.
const JUNK: usize = 1_000;
/// Unknown items per junk `Request` and `NotFound`.
const JUNK_ITEMS: usize = 100;
/// The victim's relay request timeout in the junk test: long enough that all the junk is in
/// before the first announcement it never honours times out (and costs its sender).
const JUNK_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The slowest reply the honest peer may get while the junk flows.
const PROMPT: Duration = Duration::from_secs(2);
/// Most honest request/reply rounds (the loop also ends when the junk is handled).
const MAX_ROUNDS: usize = 10_000;

/// An id nobody has.
fn unknown_id(n: usize) -> TxId {
    let mut id = [0xa5; 32];
    id[..8].copy_from_slice(&(n as u64).to_le_bytes());
    TxId(id)
}

/// One peer sends 1,000 well-formed, useless frames (requests for unknown items, `NotFound`s
/// nobody asked for, duplicates of a known transaction, announcements it never honours) while
/// another peer asks for a transaction again and again: every answer comes within two seconds,
/// and the junk sender is penalised for the announcements it never honours (as slowness, at
/// most once per request timeout: not banned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_junk_messages_do_not_delay_another_peers_requests() {
    init_tracing();
    let devnet = Devnet::new();
    // No request rate limit here: its 25,000 requested items would get the junk sender cut off
    // after a few hundred frames (the engine's `requests_beyond_the_per_peer_rate_...` test
    // covers that), and this test is about all 1,000 being handled while others are served.
    let relay = PropagationConfig {
        request_timeout: JUNK_REQUEST_TIMEOUT,
        request_rate: 1e9,
        request_burst: 1e9,
        ..PropagationConfig::default()
    };
    let mut node = FullNode::spawn(&devnet, 221, relay, SyncServiceConfig::default()).await;
    let known = tx(60, 0);
    let id = node
        .node
        .relay
        .submit_transaction(known.clone())
        .await
        .expect("accepted");
    let mut honest = RawPeer::spawn(&devnet, 222).await;
    let (mut ask, mut answers) = honest.connect(&node.node).await;
    let mut junker = RawPeer::spawn(&devnet, 223).await;
    let (junk, from_node) = junker.connect(&node.node).await;
    node.node.wait_relay_peers(2, SETUP).await;
    let drainer = tokio::spawn(drain(from_node));

    let frames: Vec<RelayMessage> = (0..JUNK)
        .map(|i| match i % 4 {
            0 => RelayMessage::Request(
                (0..JUNK_ITEMS)
                    .map(|j| InvItem::Tx(unknown_id(i * JUNK_ITEMS + j)))
                    .collect(),
            ),
            1 => RelayMessage::NotFound(
                (0..JUNK_ITEMS)
                    .map(|j| InvItem::Tx(unknown_id(i * JUNK_ITEMS + j)))
                    .collect(),
            ),
            2 => RelayMessage::Announce(vec![InvItem::Tx(unknown_id(JUNK * JUNK_ITEMS + i))]),
            _ => RelayMessage::Transactions(vec![known.clone()]),
        })
        .collect();
    let announced = frames
        .iter()
        .filter(|m| matches!(m, RelayMessage::Announce(_)))
        .count() as u64;
    let per_kind = (JUNK / 4) as u64;
    let before = node.node.relay.metrics().await.expect("metrics").received;
    let junk_handled = move |m: &playergold_services::RelayServiceMetrics| {
        [
            MessageKind::NotFound,
            MessageKind::Announce,
            MessageKind::Transactions,
        ]
        .iter()
        .all(|k| m.received.get(*k).messages - before.get(*k).messages >= per_kind)
    };
    let flooding = tokio::spawn(flood(junk, frames));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut latencies = Vec::new();
    loop {
        let asked = Instant::now();
        send(&mut ask, &RelayMessage::Request(vec![InvItem::Tx(id)])).await;
        loop {
            match recv(&mut answers, WAIT).await {
                RelayMessage::Transactions(txs) if txs.iter().any(|t| t.id() == id) => break,
                _ => {}
            }
        }
        latencies.push(asked.elapsed());
        let m = node.node.relay.metrics().await.expect("metrics");
        if flooding.is_finished() && junk_handled(&m) {
            break;
        }
        assert!(
            Instant::now() < deadline && latencies.len() < MAX_ROUNDS,
            "the junk was not handled within a minute: {m:?}"
        );
    }
    let flood_time = started.elapsed();
    let (written, _junk) = flooding.await.expect("flood task");
    assert_eq!(written, JUNK, "all the junk went out before any penalty");
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "junk: {JUNK} frames handled in {flood_time:?}; {} honest requests answered, slowest {slowest:?}",
        latencies.len()
    );
    assert!(
        latencies.len() >= 3,
        "the honest peer asked while the junk flowed"
    );
    assert!(slowest < PROMPT, "an honest request waited {slowest:?}");

    // The announcements it never honoured time out and cost it, as slowness: one offence per
    // request timeout however many time out together, never a ban (not honouring an
    // announcement proves nothing; the waits it caused are bounded by MAX_WANTED).
    // What reputation makes of it depends on the local-overload guard (a loaded CI machine may
    // have it on): the engine's offences are what the test counts.
    let junker_id = junker.peer_id();
    let deadline = Instant::now() + WAIT;
    let mut events = Vec::new();
    while !events.iter().any(|e| {
        *e == RelayServiceEvent::Offence {
            peer: junker_id,
            reason: Reason::Relay(Offence::RequestTimeout),
        }
    }) {
        assert!(Instant::now() < deadline, "no timeout for the junk sender");
        tokio::time::sleep(JUNK_REQUEST_TIMEOUT / 10).await;
        events.extend(node.node.take_events());
    }
    let standing = node
        .reputation
        .standing(junker_id)
        .await
        .expect("reputation");
    assert!(standing.score <= 0.0 && !standing.banned, "{standing:?}");
    assert!(
        standing
            .log
            .iter()
            .all(|e| e.reason == Reason::Relay(Offence::RequestTimeout)),
        "only the unhonoured announcements cost it: {standing:?}"
    );
    events.extend(node.node.take_events());
    let timeouts = events
        .iter()
        .filter(|e| {
            **e == RelayServiceEvent::Offence {
                peer: junker_id,
                reason: Reason::Relay(Offence::RequestTimeout),
            }
        })
        .count() as u64;
    let windows = started.elapsed().as_secs() / JUNK_REQUEST_TIMEOUT.as_secs() + 1;
    assert!(
        (1..=windows).contains(&timeouts),
        "{timeouts} timeouts for {announced} unhonoured announcements over {windows} windows"
    );
    let honest_id = honest.peer_id();
    assert!(node.connected().await.contains(&honest_id));
    let standing = node
        .reputation
        .standing(honest_id)
        .await
        .expect("reputation");
    assert!(
        standing.score >= 0.0,
        "the honest peer lost nothing: {standing:?}"
    );
    drainer.abort();
    node.stop().await;
    honest.net.stop().await;
    junker.net.stop().await;
}

/// The largest length a frame header can announce.
const HUGE: u32 = u32::MAX;
/// Bytes each oversized-frame sender writes after its header (never read by the node).
const TAIL: usize = 256 * 1024;
/// The most the process may grow while oversized frames arrive.
const RSS_BOUND: u64 = 64 * 1024 * 1024;

/// Writes a frame header announcing `len` bytes, then [`TAIL`] bytes of it, best effort (the
/// node resets the stream as soon as it reads the header).
async fn oversized(stream: &mut Stream, len: u32) {
    let write = async {
        stream.write_all(FrameHeader::new(len).as_bytes()).await?;
        stream.write_all(&vec![0x5a; TAIL]).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(WAIT, write).await;
}

/// Frame headers announcing 4 GiB, on a relay stream before the hello, on a relay stream after
/// it, and on a sync request stream: each sender is penalised for a malformed frame, banned and
/// disconnected; nothing is allocated for the announced lengths (the process grows by less
/// than 64 MiB for 12 GiB announced); no service stops, and the node keeps serving an honest
/// peer. Runs in its own process, so the resident set size is this test's alone.
#[test]
fn oversized_frames_on_relay_and_sync_cost_their_senders_and_nothing_else() {
    if !alone("attack::oversized_frames_on_relay_and_sync_cost_their_senders_and_nothing_else") {
        return;
    }
    runtime().block_on(async {
        init_tracing();
        let devnet = Devnet::new();
        let mut node = FullNode::spawn(
            &devnet,
            224,
            PropagationConfig::default(),
            SyncServiceConfig::default(),
        )
        .await;
        let friend = FullNode::spawn(
            &devnet,
            225,
            PropagationConfig::default(),
            SyncServiceConfig::default(),
        )
        .await;
        friend.node.connect(&node.node).await;
        node.node.wait_relay_peers(1, SETUP).await;
        let name = NetworkName::new(TEST_NETWORK).expect("valid name");
        let node_id = node.peer_id();

        let rss_before = rss_bytes();
        let peak = RssPeak::start();

        // Before the hello: the relay reads the hello under its own small limit.
        let early = RawPeer::spawn(&devnet, 226).await;
        early
            .net
            .handle
            .connect(node.node.net.dial_addr())
            .await
            .expect("connect");
        let mut stream = early
            .net
            .handle
            .streams()
            .open_stream(node_id, relay_protocol(&name).expect("protocol"))
            .await
            .expect("relay stream");
        oversized(&mut stream, HUGE).await;
        node.wait_banned(early.peer_id(), WAIT).await;

        // After the hello: the relay's frame limit.
        let mut late = RawPeer::spawn(&devnet, 227).await;
        let (mut stream, _from_node) = late.connect(&node.node).await;
        node.node.wait_relay_peers(2, SETUP).await;
        oversized(&mut stream, HUGE).await;
        node.wait_banned(late.peer_id(), WAIT).await;

        // A sync request: the request limit.
        let syncer = RawPeer::spawn(&devnet, 228).await;
        syncer
            .net
            .handle
            .connect(node.node.net.dial_addr())
            .await
            .expect("connect");
        let sync = sync_protocol(&name).expect("protocol");
        let mut stream = syncer
            .net
            .handle
            .streams()
            .open_stream(node_id, sync)
            .await
            .expect("sync stream");
        assert!(HUGE > MAX_REQUEST_FRAME.bytes() && HUGE > MAX_FRAME_SIZE.bytes());
        oversized(&mut stream, HUGE).await;
        node.wait_banned(syncer.peer_id(), WAIT).await;

        let peak = peak.finish().await;
        let grown = peak.saturating_sub(rss_before);
        eprintln!(
            "oversized frames: 3 x {HUGE} bytes announced; RSS {rss_before} -> peak {peak} (+{grown})"
        );
        assert!(grown < RSS_BOUND, "the process grew by {grown} bytes");

        let malformed = Reason::MalformedFrame;
        let offences: Vec<(PeerId, Reason)> = node
            .node
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                RelayServiceEvent::Offence { peer, reason } => Some((peer, reason)),
                _ => None,
            })
            .collect();
        assert!(offences.contains(&(early.peer_id(), malformed)), "{offences:?}");
        assert!(offences.contains(&(late.peer_id(), malformed)), "{offences:?}");
        let penalties = node.sync_penalties();
        assert!(penalties.contains(&(syncer.peer_id(), malformed)), "{penalties:?}");
        // Every service still answers: none panicked.
        let relay = node.node.relay.metrics().await.expect("relay runs");
        assert_eq!(relay.malformed_frames, 2, "{relay:?}");
        let sync = node.sync.metrics().await.expect("sync runs");
        assert_eq!(sync.malformed_frames, 1, "{sync:?}");
        let bans = node.reputation.bans().await.expect("reputation runs");
        assert_eq!(bans.len(), 3, "{bans:?}");

        // The honest peer is untouched and still served.
        assert_eq!(node.connected().await, vec![friend.peer_id()]);
        assert!(!node.is_banned(friend.peer_id()).await);
        let block = next_block(&devnet, &node.node.chain, Vec::new());
        let hash = node
            .node
            .relay
            .propagate_block(block)
            .await
            .expect("imports");
        let chain = friend.node.chain.clone();
        friend
            .wait_for(WAIT, "the block at the honest peer", || {
                let chain = chain.clone();
                async move { chain.tip().hash == hash }
            })
            .await;

        join_all([early.net.stop(), late.net.stop(), syncer.net.stop()]).await;
        join_all([node.stop(), friend.stop()]).await;
    });
}

/// One block with a bad signature bans its sender at once (one report, no second chance). The
/// ban is kept in the chain store: after the node restarts on the same store, the attacker is
/// still banned and its new connection is refused at the handshake, while another peer connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_block_bans_its_sender_at_once_and_the_ban_survives_a_restart() {
    init_tracing();
    let devnet = Devnet::new();
    let index = 229;
    let mut node = FullNode::spawn(
        &devnet,
        index,
        PropagationConfig::default(),
        SyncServiceConfig::default(),
    )
    .await;
    let mut attacker = RawPeer::spawn(&devnet, 230).await;
    let attacker_id = attacker.peer_id();
    let (mut to_node, _from_node) = attacker.connect(&node.node).await;
    node.node.wait_relay_peers(1, SETUP).await;

    let (_, genesis_slot) = slots(&devnet);
    let bad = forged_block(&devnet, genesis_slot + 1, 0);
    send(
        &mut to_node,
        &RelayMessage::CompactBlock(CompactBlock::of(&bad)),
    )
    .await;
    let offence = RelayServiceEvent::Offence {
        peer: attacker_id,
        reason: Reason::Relay(Offence::InvalidHeader),
    };
    node.node
        .wait_event(WAIT, "the offence", |e| *e == offence)
        .await;
    node.wait_banned(attacker_id, WAIT).await;
    let standing = node
        .reputation
        .standing(attacker_id)
        .await
        .expect("reputation");
    assert_eq!(
        standing.log.len(),
        1,
        "banned on its first report: {standing:?}"
    );
    assert!(standing.banned);
    assert!(!node.node.chain.has_block(&bad.hash()));

    // Restart on the same store (new process state, new network identity).
    node.stop().await;
    let node = FullNode::spawn(
        &devnet,
        index,
        PropagationConfig::default(),
        SyncServiceConfig::default(),
    )
    .await;
    let bans = node.reputation.bans().await.expect("reputation");
    assert!(bans.iter().any(|b| b.peer == attacker_id), "{bans:?}");
    assert!(node.is_banned(attacker_id).await);

    let mut events = node.node.net.handle.subscribe();
    // The dial may even complete on our side before the node refuses it.
    let _ = attacker.net.handle.connect(node.node.net.dial_addr()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(NetworkEvent::InboundRefused { reason, .. })) => {
                assert!(
                    reason.contains("banned") && reason.contains(&attacker_id.to_string()),
                    "{reason}"
                );
                break;
            }
            Ok(Ok(NetworkEvent::PeerConnected { peer, .. })) => {
                assert_ne!(peer, attacker_id, "the banned attacker got in")
            }
            Ok(_) => {}
            Err(_) => panic!("no refusal of the banned attacker within {WAIT:?}"),
        }
    }
    assert!(!node.connected().await.contains(&attacker_id));

    // Anyone else still gets in.
    let mut newcomer = RawPeer::spawn(&devnet, 231).await;
    let _streams = newcomer.connect(&node.node).await;
    assert_eq!(node.connected().await, vec![newcomer.peer_id()]);
    newcomer.net.stop().await;
    attacker.net.stop().await;
    node.stop().await;
}
