//! Honest propagation across a 20-node network: transactions and compact blocks.

use std::time::Duration;

use futures::future::join_all;
use playergold_chain::ChainBackend;
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    BlockVerdict, CompactBlock, InvItem, PropagationConfig, RelayMessage,
};
use playergold_services::RelayError;
use playergold_services::relay::MessageKind;

use crate::support::{
    Devnet, RawPeer, RelayNode, forged_tx, init_tracing, recv, send, spawn_nodes, tx, wire,
};

const NODES: usize = 20;
const SETUP: Duration = Duration::from_secs(40);
const SPREAD: Duration = Duration::from_secs(20);

/// A ring with chords to the node five ahead: degree 4, diameter 3.
fn ring_with_chords(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|i| [(i, (i + 1) % n), (i, (i + 5) % n)])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_submitted_at_one_node_reaches_all_twenty() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig::default();
    let mut nodes = spawn_nodes(&devnet, 0, NODES as u8, &config, Capabilities::NONE).await;
    wire(&mut nodes, &ring_with_chords(NODES), SETUP).await;

    let t = tx(1, 0);
    let id = nodes[7]
        .relay
        .submit_transaction(t.clone())
        .await
        .expect("a valid transaction is accepted");
    assert_eq!(id, t.id());
    for node in &mut nodes {
        let chain = node.chain.clone();
        node.wait_until(SPREAD, "the transaction", || {
            let chain = chain.clone();
            async move { chain.mempool_contains(&id) }
        })
        .await;
    }
    let mut received = 0;
    for node in &nodes {
        received += node
            .relay
            .metrics()
            .await
            .expect("metrics")
            .engine
            .tx
            .received;
    }
    assert_eq!(
        received,
        NODES as u64 - 1,
        "every other node accepted it once"
    );
    join_all(nodes.into_iter().map(|n| n.stop())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_is_rebuilt_from_mempools_without_a_full_block_transfer() {
    init_tracing();
    let devnet = Devnet::new();
    let config = PropagationConfig::default();
    let mut nodes = spawn_nodes(&devnet, 20, NODES as u8, &config, Capabilities::NONE).await;
    wire(&mut nodes, &ring_with_chords(NODES), SETUP).await;

    let txs: Vec<_> = (0..40u16).map(|i| tx(100 + i, 0)).collect();
    for (i, t) in txs.iter().enumerate() {
        nodes[i % NODES]
            .relay
            .submit_transaction(t.clone())
            .await
            .expect("accepted");
    }
    for node in &mut nodes {
        let chain = node.chain.clone();
        let ids: Vec<_> = txs.iter().map(|t| t.id()).collect();
        node.wait_until(SPREAD, "every transaction", || {
            let (chain, ids) = (chain.clone(), ids.clone());
            async move { ids.iter().all(|id| chain.mempool_contains(id)) }
        })
        .await;
    }

    let block = devnet.produce(&nodes[3].chain, 1_000);
    assert_eq!(block.txs.len(), txs.len());
    let hash = nodes[3]
        .relay
        .propagate_block(block.clone())
        .await
        .expect("our own block imports");
    for node in &mut nodes {
        let chain = node.chain.clone();
        node.wait_until(SPREAD, "the block", || {
            let chain = chain.clone();
            async move { chain.tip().hash == hash }
        })
        .await;
    }

    let mut rebuilt = 0;
    for (i, node) in nodes.iter().enumerate() {
        let m = node.relay.metrics().await.expect("metrics");
        assert_eq!(
            m.received.get(MessageKind::Block).messages,
            0,
            "node {i}: full block"
        );
        assert_eq!(
            m.received.get(MessageKind::BlockTxns).messages,
            0,
            "node {i}: block txs"
        );
        assert_eq!(m.engine.compact_fallback, 0, "node {i}: fallback");
        assert_eq!(m.engine.compact_partial, 0, "node {i}: partial rebuild");
        assert!(m.engine.compact_rebuilt <= 1, "node {i}: rebuilt twice");
        rebuilt += m.engine.compact_rebuilt;
        assert!(
            node.chain.mempool_len() == 0,
            "node {i}: included txs left the mempool"
        );
    }
    assert_eq!(rebuilt, NODES as u64 - 1, "every other node rebuilt it");

    // The compact form is a small fraction of the block.
    let m = nodes[3].relay.metrics().await.expect("metrics");
    let compact = m.sent.get(MessageKind::CompactBlock);
    let per_copy = compact.bytes / compact.messages.max(1);
    let full = playergold_primitives::codec::encoded_len(&block) as u64;
    assert!(
        per_copy * 10 < full,
        "compact {per_copy} bytes vs full {full} bytes"
    );
    join_all(nodes.into_iter().map(|n| n.stop())).await;
}

/// Our own block is pushed on its valid header before it is imported: a block whose body then
/// fails import has already gone out (the producer learns of the failure), and its body is never
/// served to the peers that got the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_goes_out_on_its_header_and_an_invalid_body_is_never_served() {
    init_tracing();
    let devnet = Devnet::new();
    let mut node = RelayNode::spawn(
        &devnet,
        160,
        PropagationConfig::default(),
        Capabilities::NONE,
    )
    .await;
    let mut peer = RawPeer::spawn(&devnet, 161).await;
    let (mut to_node, mut from_node) = peer.connect(&node).await;
    node.wait_relay_peers(1, SETUP).await;

    // A validly signed header over a transaction whose signature does not verify.
    let block = devnet.block_with(&node.chain, vec![tx(1, 0), forged_tx(2, 0)]);
    let hash = block.hash();
    let refused = node.relay.propagate_block(block.clone()).await;
    assert!(
        matches!(
            refused,
            Err(RelayError::BlockRejected {
                verdict: BlockVerdict::Invalid,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(!node.chain.has_block(&hash));
    // Yet it went out: the push left on the header, before the import.
    assert_eq!(
        recv(&mut from_node, SPREAD).await,
        RelayMessage::CompactBlock(CompactBlock::of(&block))
    );
    // Neither its transactions nor the block are served.
    let not_found = RelayMessage::NotFound(vec![InvItem::Block(hash)]);
    for ask in [
        RelayMessage::BlockTxnsRequest {
            block: hash,
            indexes: vec![0, 1],
        },
        RelayMessage::Request(vec![InvItem::Block(hash)]),
    ] {
        send(&mut to_node, &ask).await;
        assert_eq!(recv(&mut from_node, SPREAD).await, not_found);
    }
    node.stop().await;
    peer.net.stop().await;
}
