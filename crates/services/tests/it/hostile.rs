//! Peers that lie, withhold or never read, built by hand on the raw stream control.

use std::time::Duration;

use futures::future::join_all;
use playergold_chain::ChainBackend;
use playergold_net::framing::{FrameHeader, write_frame};
use playergold_primitives::codec;
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{Fanout, InvItem, Offence, PropagationConfig, RelayMessage};
use playergold_protocol::reputation::Reason;
use playergold_services::RelayServiceEvent;
use playergold_services::relay::{MAX_FRAME_SIZE, RelayHello};

use crate::fullnode::{RssPeak, alone, rss_bytes, runtime};
use crate::support::{
    Devnet, RawPeer, RelayNode, forged_tx, init_tracing, recv, send, spawn_nodes, tx, wire,
};

/// Generous: it only bounds a wait that ends as soon as the streams are up (a loaded CI machine
/// has taken over 20 s).
const SETUP: Duration = Duration::from_secs(40);
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_with_a_bad_signature_reaches_no_second_node_and_costs_its_sender() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig {
        // Push everything in full, so a relayed forgery would surely travel.
        gossip_factor: Fanout::Fraction(1.0),
        ..PropagationConfig::default()
    };
    let mut nodes = spawn_nodes(&devnet, 40, 4, &config, Capabilities::NONE).await;
    wire(&mut nodes, &[(0, 1), (1, 2), (2, 3), (3, 0)], SETUP).await;
    let mut liar = RawPeer::spawn(&devnet, 45).await;
    let (mut to_node, _from_node) = liar.connect(&nodes[0]).await;
    nodes[0].wait_relay_peers(3, SETUP).await;

    let bad = forged_tx(1, 0);
    let good = tx(2, 0);
    send(&mut to_node, &RelayMessage::Transactions(vec![bad.clone()])).await;
    // Sent after the forgery on the same stream: once it is everywhere, the forgery had its
    // chance to travel first.
    send(
        &mut to_node,
        &RelayMessage::Transactions(vec![good.clone()]),
    )
    .await;
    for node in &mut nodes {
        let chain = node.chain.clone();
        let id = good.id();
        node.wait_until(WAIT, "the valid transaction", || {
            let chain = chain.clone();
            async move { chain.mempool_contains(&id) }
        })
        .await;
    }
    let liar_id = liar.peer_id();
    for (i, node) in nodes.iter_mut().enumerate() {
        assert!(
            !node.chain.mempool_contains(&bad.id()),
            "node {i} took the forgery"
        );
        let events = node.take_events();
        assert!(
            !events.iter().any(
                |e| matches!(e, RelayServiceEvent::NewTransaction { id, .. } if *id == bad.id())
            ),
            "node {i} accepted the forgery"
        );
        let offence = RelayServiceEvent::Offence {
            peer: liar_id,
            reason: Reason::Relay(Offence::InvalidTransaction),
        };
        assert_eq!(events.contains(&offence), i == 0, "node {i}: offence");
        if i > 0 {
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, RelayServiceEvent::Offence { .. })),
                "node {i} saw an invalid transaction from an honest peer"
            );
        }
    }
    join_all(nodes.into_iter().map(|n| n.stop())).await;
    liar.net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_announcement_is_recovered_from_another_announcer() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig::default();
    let mut a = RelayNode::spawn(&devnet, 50, config.clone(), Capabilities::NONE).await;
    // B announces everything (pushes to nobody), so A must request from an announcer.
    let announce_only = PropagationConfig {
        gossip_factor: Fanout::Fixed(0),
        ..config.clone()
    };
    let mut b = RelayNode::spawn(&devnet, 51, announce_only, Capabilities::NONE).await;
    b.connect(&a).await;
    b.wait_relay_peers(1, SETUP).await;
    let mut withholder = RawPeer::spawn(&devnet, 52).await;
    let (mut to_a, mut from_a) = withholder.connect(&a).await;
    a.wait_relay_peers(2, SETUP).await;

    let t = tx(9, 0);
    let item = InvItem::Tx(t.id());
    send(&mut to_a, &RelayMessage::Announce(vec![item])).await;
    // A asks the first announcer, which will never answer.
    loop {
        match recv(&mut from_a, WAIT).await {
            RelayMessage::Request(items) if items.contains(&item) => break,
            _ => {}
        }
    }
    // Now B learns the transaction and announces it to A.
    b.relay
        .submit_transaction(t.clone())
        .await
        .expect("accepted");
    let timeout = RelayServiceEvent::Offence {
        peer: withholder.peer_id(),
        reason: Reason::Relay(Offence::RequestTimeout),
    };
    let mut blamed = false;
    let event = a
        .wait_event(WAIT, "the transaction", |e| {
            blamed |= *e == timeout;
            matches!(e, RelayServiceEvent::NewTransaction { id, .. } if *id == t.id())
        })
        .await;
    assert!(
        matches!(
            event,
            RelayServiceEvent::NewTransaction { id, from: Some(from), .. }
                if id == t.id() && from == b.peer_id()
        ),
        "{event:?}"
    );
    assert!(
        blamed,
        "the withholder is blamed for the timeout before the retry"
    );
    let m = a.relay.metrics().await.expect("metrics");
    assert!(m.engine.retries >= 1, "recovered by a retry: {m:?}");
    assert!(a.chain.mempool_contains(&t.id()));
    a.stop().await;
    b.stop().await;
    withholder.net.stop().await;
}

/// The most the process may grow while a peer that never reads asks for far more than that.
const RSS_BOUND: u64 = 64 * 1024 * 1024;

/// Runs in its own process, so the resident set size is this test's alone.
#[test]
fn a_peer_that_never_reads_is_dropped_with_its_queue_and_memory_bounded() {
    if alone("hostile::a_peer_that_never_reads_is_dropped_with_its_queue_and_memory_bounded") {
        runtime().block_on(never_reading_peer());
    }
}

async fn never_reading_peer() {
    init_tracing();
    let devnet = Devnet::new();
    let limit = 2 * 1024 * 1024;
    let config = PropagationConfig {
        max_peer_queue_bytes: limit,
        ..PropagationConfig::default()
    };
    let mut a = RelayNode::spawn(&devnet, 70, config, Capabilities::NONE).await;
    let mut b = RelayNode::spawn(
        &devnet,
        71,
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .await;
    b.connect(&a).await;
    b.wait_relay_peers(1, SETUP).await;

    // A large block in A's chain, for the sink to ask for again and again.
    let txs: Vec<_> = (0..4_000u16).map(|i| tx(1_000 + i, 0)).collect();
    let block = devnet.block_with(&a.chain, txs);
    let block_bytes = playergold_primitives::codec::encoded_len(&block);
    let hash = a.relay.propagate_block(block).await.expect("imports");

    let mut sink = RawPeer::spawn(&devnet, 72).await;
    // Keep A's stream to us open, and never read it.
    let (mut to_a, _never_read) = sink.connect(&a).await;
    a.wait_relay_peers(2, SETUP).await;
    // Ask for four times the memory bound in copies: far beyond the transport's windows
    // (~10 MB) plus A's queue bound. Requests after A drops the sink fail to go out: the rest
    // of the asks are not sent.
    let asks = (4 * RSS_BOUND as usize).div_ceil(block_bytes);
    assert!(asks * block_bytes > 10_000_000 + 2 * limit);
    let sink_id = sink.peer_id();
    let rss_before = rss_bytes();
    let peak = RssPeak::start();
    let ask = codec::encode(&RelayMessage::Request(vec![InvItem::Block(hash)]));
    let mut asked = 0;
    for _ in 0..asks {
        if write_frame(&mut to_a, &ask, MAX_FRAME_SIZE).await.is_err() {
            break;
        }
        asked += 1;
    }
    a.wait_event(Duration::from_secs(30), "the sink dropped as slow", |e| {
        *e == RelayServiceEvent::SlowPeer { peer: sink_id }
    })
    .await;
    sink.wait_disconnected(a.peer_id(), WAIT).await;
    let peak = peak.finish().await;
    let grown = peak.saturating_sub(rss_before);
    eprintln!(
        "never-reading peer: {asked} asks for {} bytes; RSS {rss_before} -> peak {peak} (+{grown})",
        asked * block_bytes
    );
    assert!(
        asked as u64 * block_bytes as u64 > 2 * RSS_BOUND,
        "far more than the bound was asked for before the drop: {asked} asks"
    );
    assert!(grown < RSS_BOUND, "the process grew by {grown} bytes");

    let m = a.relay.metrics().await.expect("metrics");
    assert_eq!(m.engine.slow_peers, 1);
    assert!(
        m.peak_peer_queue_bytes <= limit,
        "queue reached {} bytes, limit {limit}",
        m.peak_peer_queue_bytes
    );
    assert!(
        m.peak_peer_queue_bytes >= limit - 2 * block_bytes,
        "the queue did fill"
    );
    assert_eq!(m.peers, 1, "only the honest peer is left");

    // A keeps relaying to its honest peer.
    let id = a
        .relay
        .submit_transaction(tx(5, 0))
        .await
        .expect("accepted");
    let chain = b.chain.clone();
    b.wait_until(WAIT, "relay goes on", || {
        let chain = chain.clone();
        async move { chain.mempool_contains(&id) }
    })
    .await;
    a.stop().await;
    b.stop().await;
    sink.net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_does_not_decode_costs_the_sender_its_connection() {
    init_tracing();
    let devnet = Devnet::new();
    let mut a = RelayNode::spawn(
        &devnet,
        90,
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .await;
    let mut garbler = RawPeer::spawn(&devnet, 91).await;
    let (mut to_a, _from_a) = garbler.connect(&a).await;
    a.wait_relay_peers(1, SETUP).await;

    // A valid frame header and a payload that is no relay message.
    write_frame(&mut to_a, &[0xff; 64], MAX_FRAME_SIZE)
        .await
        .expect("write");
    let garbler_id = garbler.peer_id();
    a.wait_event(WAIT, "the offence", |e| {
        *e == RelayServiceEvent::Offence {
            peer: garbler_id,
            reason: Reason::MalformedFrame,
        }
    })
    .await;
    garbler.wait_disconnected(a.peer_id(), WAIT).await;
    let m = a.relay.metrics().await.expect("metrics");
    assert_eq!(m.malformed_frames, 1);
    assert_eq!(m.peers, 0);

    // A frame announcing more than the limit is refused from its header alone.
    let mut liar = RawPeer::spawn(&devnet, 92).await;
    let (mut to_a, _from_a) = liar.connect(&a).await;
    a.wait_relay_peers(1, SETUP).await;
    let too_long = FrameHeader::new(MAX_FRAME_SIZE.bytes() + 1);
    futures::AsyncWriteExt::write_all(&mut to_a, too_long.as_bytes())
        .await
        .expect("write");
    futures::AsyncWriteExt::flush(&mut to_a)
        .await
        .expect("flush");
    liar.wait_disconnected(a.peer_id(), WAIT).await;
    assert_eq!(
        a.relay.metrics().await.expect("metrics").malformed_frames,
        2
    );
    a.stop().await;
    garbler.net.stop().await;
    liar.net.stop().await;
}

/// libp2p-stream drops an inbound stream when its accept queue is full (many peers opening at
/// once, as at start-up), and the opener learns it only from the reset. The relay re-opens such
/// a stream by itself: without that, a quiet link stays half open until a frame fails on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stream_the_peer_drops_is_opened_again_without_traffic() {
    init_tracing();
    let devnet = Devnet::new();
    let mut a = RelayNode::spawn(
        &devnet,
        240,
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .await;
    let mut peer = RawPeer::spawn(&devnet, 241).await;
    let (_to_a, from_a) = peer.connect(&a).await;
    a.wait_relay_peers(1, SETUP).await;

    // Dropped unread: yamux resets it, as libp2p-stream's full queue does.
    drop(from_a);
    let (again, mut stream) = peer.accept(WAIT).await;
    assert_eq!(again, a.peer_id());
    // The new stream works: a transaction A takes in reaches us on it.
    let t = tx(7, 0);
    a.relay
        .submit_transaction(t.clone())
        .await
        .expect("A accepts the transaction");
    let msg = recv(&mut stream, WAIT).await;
    // Pushed in full to our one peer (⌈√1⌉ = 1 of 1), or announced.
    let carries = match &msg {
        RelayMessage::Transactions(txs) => txs.contains(&t),
        RelayMessage::Announce(items) => items.contains(&InvItem::Tx(t.id())),
        RelayMessage::AnnounceTx(_) | RelayMessage::AnnounceTxs(_) => true,
        _ => false,
    };
    assert!(
        carries,
        "A relays the transaction on its new stream: {msg:?}"
    );
    let m = a.relay.metrics().await.expect("metrics");
    assert_eq!(m.peers, 1, "the peer stays in the relay");
    a.stop().await;
    peer.net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_another_genesis_is_disconnected_without_penalty() {
    init_tracing();
    let devnet = Devnet::new();
    let mut a = RelayNode::spawn(
        &devnet,
        93,
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .await;
    let mut stranger = RawPeer::spawn(&devnet, 94).await;
    let other = RelayHello {
        genesis: playergold_primitives::BlockHash([9; 32]),
        capabilities: Capabilities::NONE,
        tx_salt: None,
    };
    assert_ne!(other.genesis, devnet.genesis.hash());
    let (a_id, _ours) = stranger.open(&a, other).await;
    stranger.wait_disconnected(a_id, WAIT).await;
    let events = a.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RelayServiceEvent::Offence { .. })),
        "{events:?}"
    );
    assert_eq!(a.relay.metrics().await.expect("metrics").peers, 0);
    a.stop().await;
    stranger.net.stop().await;
}
