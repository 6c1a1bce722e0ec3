//! Hostile input against the named limits: every item-count and frame limit refuses with an
//! error, never a panic; the relay engine's per-peer known set, wanted set and outbound queue
//! stay bounded under floods; a junk flood from one peer does not delay another's replies; the
//! sync scheduler holds at most `max_pending_headers` headers from a peer that never sends bodies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use playergold_primitives::codec::{self, DecodeError, WireDecode};
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Genesis, Height, Keypair, MAX_BLOCK_BYTES, MAX_BLOCK_TXS,
    MAX_HEADER_BYTES, MAX_TX_BYTES, PublicKey, TimestampMs, Transaction, TxId, Work,
};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    BlockVerdict, CompactBlock, InvItem, MAX_ITEMS_PER_MESSAGE, MAX_KNOWN_PER_PEER,
    MAX_RELAY_FRAME_BYTES, MAX_WANTED, PropagationConfig, RelayEngine, RelayEvent, RelayHost,
    RelayMessage, ShortId,
};
use playergold_protocol::reputation::{Action, Reason, Reputation, ReputationConfig};
use playergold_protocol::sync::{
    MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REQUEST, MAX_LOCATOR_LEN, MAX_SYNC_FRAME_BYTES, Status,
    SyncAction, SyncConfig, SyncHost, SyncRequest, SyncResponse, SyncScheduler,
};

use crate::sim::{FakeHost, Sim};

// ---- a small chain for sync tests ------------------------------------------------------------

/// A chain for sync tests: blocks with cumulative work (one per block), the best chain by work.
/// A header is valid when its producer is the validator and it extends its parent by one.
pub(crate) struct TestChain {
    genesis: BlockHash,
    validator: PublicKey,
    blocks: HashMap<BlockHash, (Block, Work)>,
    best: Vec<BlockHash>,
}

impl TestChain {
    /// A chain holding only the genesis of `validator`'s devnet.
    pub(crate) fn new(validator: &Keypair) -> TestChain {
        let genesis = Genesis::devnet("hostilenet", vec![validator.public()], TimestampMs(0))
            .expect("valid genesis")
            .block();
        let hash = genesis.hash();
        TestChain {
            genesis: hash,
            validator: validator.public(),
            blocks: HashMap::from([(hash, (genesis, Work(0)))]),
            best: vec![hash],
        }
    }

    /// `n` blocks signed by `key` on top of `parent`, `step` ms apart (not imported).
    pub(crate) fn build_on(parent: &BlockHeader, key: &Keypair, n: usize, step: u64) -> Vec<Block> {
        let mut out: Vec<Block> = Vec::with_capacity(n);
        for _ in 0..n {
            let p = out.last().map_or(parent, |b| &b.header);
            out.push(Block::build(
                key,
                p.hash(),
                Height(p.height.0 + 1),
                TimestampMs(p.timestamp_ms.0 + step),
                vec![],
            ));
        }
        out
    }

    /// The genesis header.
    pub(crate) fn genesis_header(&self) -> BlockHeader {
        self.blocks[&self.genesis].0.header.clone()
    }

    /// Imports a block whose parent is stored; the most work wins. False if refused.
    pub(crate) fn import(&mut self, block: &Block) -> bool {
        let Some((parent, work)) = self.blocks.get(&block.header.parent).cloned() else {
            return false;
        };
        if self.check_header(&block.header, &parent.header).is_none() {
            return false;
        }
        let hash = block.hash();
        let work = Work(work.0 + 1);
        let best_work = self.tip().2;
        self.blocks.insert(hash, (block.clone(), work));
        if work > best_work {
            let mut chain = vec![hash];
            let mut h = block.header.parent;
            while let Some((b, _)) = self.blocks.get(&h) {
                chain.push(h);
                if b.header.height.0 == 0 {
                    break;
                }
                h = b.header.parent;
            }
            chain.reverse();
            self.best = chain;
        }
        true
    }

    /// Our status, as sent to peers.
    pub(crate) fn status(&self) -> Status {
        let (best_hash, best_height, cumulative_work) = self.tip();
        Status {
            genesis: self.genesis,
            best_hash,
            best_height,
            cumulative_work,
            capabilities: Capabilities::NONE,
        }
    }

    /// What an honest server answers to `request`.
    pub(crate) fn answer(&self, request: &SyncRequest) -> SyncResponse {
        match request {
            SyncRequest::Status(_) => SyncResponse::Status(self.status()),
            SyncRequest::GetHeaders { locator, max } => {
                let start = locator
                    .iter()
                    .find_map(|h| self.best.iter().position(|b| b == h))
                    .map_or(0, |i| i + 1);
                SyncResponse::Headers(
                    self.best[start..]
                        .iter()
                        .take(*max as usize)
                        .map(|h| self.blocks[h].0.header.clone())
                        .collect(),
                )
            }
            SyncRequest::GetBlocks(hashes) => SyncResponse::Blocks(
                hashes
                    .iter()
                    .filter_map(|h| self.blocks.get(h).map(|(b, _)| b.clone()))
                    .collect(),
            ),
        }
    }
}

impl SyncHost for TestChain {
    fn genesis(&self) -> BlockHash {
        self.genesis
    }
    fn tip(&self) -> (BlockHash, Height, Work) {
        let hash = *self.best.last().expect("genesis is always there");
        let (b, w) = &self.blocks[&hash];
        (hash, b.header.height, *w)
    }
    fn locator(&self) -> Vec<BlockHash> {
        self.best
            .iter()
            .rev()
            .take(MAX_LOCATOR_LEN)
            .copied()
            .collect()
    }
    fn header(&self, hash: &BlockHash) -> Option<BlockHeader> {
        self.blocks.get(hash).map(|(b, _)| b.header.clone())
    }
    fn work_of(&self, hash: &BlockHash) -> Option<Work> {
        self.blocks.get(hash).map(|(_, w)| *w)
    }
    fn check_header(&self, header: &BlockHeader, parent: &BlockHeader) -> Option<Work> {
        let ok = header.parent == parent.hash()
            && header.height.0 == parent.height.0 + 1
            && header.producer == self.validator;
        ok.then_some(Work(1))
    }
}

// ---- frame and item limits -------------------------------------------------------------------

/// Decodes the encoding of `value`: `Ok` when within limits, else the error.
fn reencode<T: WireDecode + serde::Serialize>(value: &T) -> Result<T, DecodeError> {
    codec::decode::<T>(&codec::encode(value))
}

fn too_many<T: std::fmt::Debug>(r: Result<T, DecodeError>, max: usize) -> bool {
    matches!(r, Err(DecodeError::TooManyItems { count, max: m, .. }) if count == max + 1 && m == max)
}

#[test]
fn every_item_limit_accepts_the_limit_and_refuses_one_more_with_an_error() {
    let sim = Sim::new(1, PropagationConfig::default());
    let tx = sim.tx(1);
    let block_with = |n: usize| Block {
        header: sim.genesis.header.clone(),
        txs: vec![tx.clone(); n],
    };
    let ids = |n: usize| vec![InvItem::Tx(TxId([7; 32])); n];
    let hashes = |n: usize| vec![BlockHash([3; 32]); n];
    let m = MAX_ITEMS_PER_MESSAGE;
    let b = MAX_BLOCK_TXS;
    // (what, message at its limit, message one over, the limit)
    let relay: Vec<(&str, RelayMessage, RelayMessage, usize)> = vec![
        (
            "announce",
            RelayMessage::Announce(ids(m)),
            RelayMessage::Announce(ids(m + 1)),
            m,
        ),
        (
            "request",
            RelayMessage::Request(ids(m)),
            RelayMessage::Request(ids(m + 1)),
            m,
        ),
        (
            "notfound",
            RelayMessage::NotFound(ids(m)),
            RelayMessage::NotFound(ids(m + 1)),
            m,
        ),
        (
            "transactions",
            RelayMessage::Transactions(vec![tx.clone(); m]),
            RelayMessage::Transactions(vec![tx.clone(); m + 1]),
            m,
        ),
        (
            "blocktxns",
            RelayMessage::BlockTxns {
                block: BlockHash([1; 32]),
                txs: vec![tx.clone(); b],
            },
            RelayMessage::BlockTxns {
                block: BlockHash([1; 32]),
                txs: vec![tx.clone(); b + 1],
            },
            b,
        ),
        (
            "blocktxnsrequest",
            RelayMessage::BlockTxnsRequest {
                block: BlockHash([1; 32]),
                indexes: (0..b as u32).collect(),
            },
            RelayMessage::BlockTxnsRequest {
                block: BlockHash([1; 32]),
                indexes: (0..=b as u32).collect(),
            },
            b,
        ),
        (
            "compact",
            RelayMessage::CompactBlock(CompactBlock {
                header: sim.genesis.header.clone(),
                short_ids: vec![ShortId([1; 5]); b],
            }),
            RelayMessage::CompactBlock(CompactBlock {
                header: sim.genesis.header.clone(),
                short_ids: vec![ShortId([1; 5]); b + 1],
            }),
            b,
        ),
        (
            "block",
            RelayMessage::Block(block_with(b)),
            RelayMessage::Block(block_with(b + 1)),
            b,
        ),
    ];
    for (what, at_limit, over, max) in relay {
        assert_eq!(
            reencode(&at_limit).as_ref(),
            Ok(&at_limit),
            "{what} at its limit"
        );
        assert!(too_many(reencode(&over), max), "{what} one over its limit");
    }
    assert_eq!(reencode(&block_with(b)), Ok(block_with(b)));
    assert!(too_many(reencode(&block_with(b + 1)), b));

    let locator = |n: usize| SyncRequest::GetHeaders {
        locator: hashes(n),
        max: MAX_HEADERS_PER_REQUEST,
    };
    assert!(reencode(&locator(MAX_LOCATOR_LEN)).is_ok());
    assert!(too_many(
        reencode(&locator(MAX_LOCATOR_LEN + 1)),
        MAX_LOCATOR_LEN
    ));
    let get_blocks = |n: usize| SyncRequest::GetBlocks(hashes(n));
    assert!(reencode(&get_blocks(MAX_BLOCKS_PER_REQUEST)).is_ok());
    assert!(too_many(
        reencode(&get_blocks(MAX_BLOCKS_PER_REQUEST + 1)),
        MAX_BLOCKS_PER_REQUEST
    ));
    let h = MAX_HEADERS_PER_REQUEST as usize;
    let headers = |n: usize| SyncResponse::Headers(vec![sim.genesis.header.clone(); n]);
    assert!(reencode(&headers(h)).is_ok());
    assert!(too_many(reencode(&headers(h + 1)), h));
    let blocks = |n: usize| SyncResponse::Blocks(vec![block_with(1); n]);
    assert!(reencode(&blocks(MAX_BLOCKS_PER_REQUEST)).is_ok());
    assert!(too_many(
        reencode(&blocks(MAX_BLOCKS_PER_REQUEST + 1)),
        MAX_BLOCKS_PER_REQUEST
    ));
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_parsed() {
    fn refused<T: WireDecode + std::fmt::Debug>(max: usize) {
        // Bytes that would be a valid prefix of nothing: if the limit did not come first, the
        // error would be `Malformed`, not `TooLarge`.
        let frame = vec![0xff; max + 1];
        assert_eq!(
            codec::decode::<T>(&frame).map(|_| ()),
            Err(DecodeError::TooLarge {
                what: T::WHAT,
                len: max + 1,
                max
            })
        );
        assert_eq!(T::MAX_BYTES, max);
    }
    refused::<Transaction>(MAX_TX_BYTES);
    refused::<BlockHeader>(MAX_HEADER_BYTES);
    refused::<Block>(MAX_BLOCK_BYTES);
    refused::<RelayMessage>(MAX_RELAY_FRAME_BYTES);
    refused::<SyncResponse>(MAX_SYNC_FRAME_BYTES);
    refused::<SyncRequest>(SyncRequest::MAX_BYTES);
}

// ---- relay engine bounds ---------------------------------------------------------------------

/// Drains `peer`'s queue.
fn read_all(engine: &mut RelayEngine<usize>, peer: usize) -> Vec<RelayMessage> {
    std::iter::from_fn(|| engine.poll_transmit(&peer)).collect()
}

fn sent_txs(msgs: &[RelayMessage]) -> Vec<TxId> {
    msgs.iter()
        .flat_map(|m| match m {
            RelayMessage::Transactions(txs) => txs.iter().map(Transaction::id).collect(),
            RelayMessage::Announce(items) => items
                .iter()
                .filter_map(|i| match i {
                    InvItem::Tx(id) => Some(*id),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn filler(i: usize) -> InvItem {
    let mut id = [0xee; 32];
    id[..8].copy_from_slice(&(i as u64).to_le_bytes());
    InvItem::Tx(TxId(id))
}

#[test]
fn a_peers_known_set_holds_exactly_max_known_per_peer_ids() {
    let sim = Sim::new(1, PropagationConfig::default());
    let mut host = FakeHost::for_tests(&sim);
    let mut engine: RelayEngine<usize> = RelayEngine::new(PropagationConfig::default(), 1);
    engine.add_peer(1, Capabilities::NONE);
    let (a, b, c) = (sim.tx(1), sim.tx(2), sim.tx(3));
    let now = sim.now;
    let later = now + Duration::from_secs(1);
    // Peer 1 announces a and b first, c last: exactly MAX_KNOWN_PER_PEER ids in all.
    let mut items = vec![InvItem::Tx(a.id()), InvItem::Tx(b.id())];
    items.extend((0..MAX_KNOWN_PER_PEER - 3).map(filler));
    items.push(InvItem::Tx(c.id()));
    assert_eq!(items.len(), MAX_KNOWN_PER_PEER);
    for chunk in items.chunks(MAX_ITEMS_PER_MESSAGE) {
        engine.handle_message(now, 1, RelayMessage::Announce(chunk.to_vec()), &mut host);
    }
    read_all(&mut engine, 1);
    // At the limit nothing is forgotten: peer 1 is known to have a, so a is not sent to it.
    engine
        .submit_transaction(now, a.clone(), &mut host)
        .expect("valid");
    engine.handle_timeout(later);
    assert!(!sent_txs(&read_all(&mut engine, 1)).contains(&a.id()));
    // Two more ids push the two oldest (a, b) out: b now goes to peer 1; c, still known, does not.
    let more = vec![filler(MAX_KNOWN_PER_PEER), filler(MAX_KNOWN_PER_PEER + 1)];
    engine.handle_message(now, 1, RelayMessage::Announce(more), &mut host);
    read_all(&mut engine, 1);
    engine
        .submit_transaction(now, b.clone(), &mut host)
        .expect("valid");
    engine
        .submit_transaction(now, c.clone(), &mut host)
        .expect("valid");
    engine.handle_timeout(later);
    let sent = sent_txs(&read_all(&mut engine, 1));
    assert_eq!(sent, vec![b.id()], "only the forgotten id is sent");
}

#[test]
fn a_flood_of_announcements_is_requested_only_up_to_max_wanted() {
    let sim = Sim::new(1, PropagationConfig::default());
    let mut host = FakeHost::for_tests(&sim);
    let mut engine: RelayEngine<usize> = RelayEngine::new(PropagationConfig::default(), 1);
    engine.add_peer(1, Capabilities::NONE);
    engine.add_peer(2, Capabilities::NONE);
    let requested = |msgs: Vec<RelayMessage>| -> usize {
        msgs.iter()
            .map(|m| match m {
                RelayMessage::Request(items) => items.len(),
                _ => 0,
            })
            .sum()
    };
    let flood = MAX_WANTED + 2 * MAX_ITEMS_PER_MESSAGE;
    let mut total = 0;
    for start in (0..flood).step_by(MAX_ITEMS_PER_MESSAGE) {
        let items = (start..start + MAX_ITEMS_PER_MESSAGE).map(filler).collect();
        engine.handle_message(sim.now, 1, RelayMessage::Announce(items), &mut host);
        total += requested(read_all(&mut engine, 1));
    }
    assert_eq!(total, MAX_WANTED, "the wanted set stops at its limit");
    // Another peer's announcements wait for room too; the set is full, not merely per-peer.
    let items = vec![filler(flood + 1)];
    engine.handle_message(sim.now, 2, RelayMessage::Announce(items), &mut host);
    assert_eq!(requested(read_all(&mut engine, 2)), 0);
}

/// A block with `n` transactions on the sim's genesis, imported by `host`.
fn big_block(sim: &Sim, host: &mut FakeHost, n: u64) -> Block {
    let block = Block::build(
        &sim.producer,
        sim.genesis.hash(),
        Height(1),
        TimestampMs(1_000),
        (0..n).map(|i| sim.tx(i)).collect(),
    );
    assert_eq!(host.submit_block(block.clone()), BlockVerdict::Imported);
    block
}

#[test]
fn a_peer_that_never_reads_is_capped_flagged_slow_once_and_others_are_still_served() {
    const LIMIT: usize = 256 * 1024;
    let config = PropagationConfig {
        max_peer_queue_bytes: LIMIT,
        ..PropagationConfig::default()
    };
    let sim = Sim::new(1, PropagationConfig::default());
    let mut host = FakeHost::for_tests(&sim);
    let block = big_block(&sim, &mut host, 200);
    let block_bytes = codec::encoded_len(&RelayMessage::Block(block.clone()));
    assert!(block_bytes * 4 < LIMIT && block_bytes * 20 > LIMIT);
    let mut engine: RelayEngine<usize> = RelayEngine::new(config, 1);
    engine.add_peer(1, Capabilities::NONE);
    engine.add_peer(2, Capabilities::NONE);
    let ask = RelayMessage::Request(vec![InvItem::Block(block.hash())]);
    let mut slow = 0;
    for _ in 0..100 {
        // Peer 1 asks again and again and never reads.
        engine.handle_message(sim.now, 1, ask.clone(), &mut host);
        assert!(engine.queued_bytes(&1) <= LIMIT);
        while let Some(e) = engine.poll_event() {
            slow += usize::from(e == RelayEvent::SlowPeer(1));
        }
    }
    assert_eq!(slow, 1, "flagged once");
    assert_eq!(engine.metrics().slow_peers, 1);
    assert_eq!(
        engine.queued_bytes(&1),
        0,
        "its queue was dropped, nothing queued since"
    );
    assert_eq!(engine.poll_transmit(&1), None);
    // Peer 2 reads: it is answered.
    engine.handle_message(sim.now, 2, ask, &mut host);
    assert_eq!(engine.poll_transmit(&2), Some(RelayMessage::Block(block)));
}

#[test]
fn a_junk_flood_from_one_peer_does_not_delay_another_peers_replies() {
    let sim = Sim::new(1, PropagationConfig::default());
    let mut host = FakeHost::for_tests(&sim);
    let mut engine: RelayEngine<usize> = RelayEngine::new(PropagationConfig::default(), 1);
    let mut rep: Reputation<usize> = Reputation::new(ReputationConfig::default());
    engine.add_peer(1, Capabilities::NONE);
    engine.add_peer(2, Capabilities::NONE);
    let honest = sim.tx(500);
    engine
        .submit_transaction(sim.now, honest.clone(), &mut host)
        .expect("valid");
    engine.handle_timeout(sim.now + Duration::from_secs(1));
    read_all(&mut engine, 1);
    read_all(&mut engine, 2);
    let mut forged = sim.tx(7);
    forged.amount = playergold_primitives::Amount(1_000_000);
    let ms = |i: u64| TimestampMs(1_000_000 + i);
    let mut first_action = None;
    for i in 0..1_000u64 {
        // Junk from peer 1: undecodable frames, forged transactions, announcements and requests
        // of things nobody has.
        match i % 4 {
            0 => {
                let frame = [0xff, 0xff, 0xff, 0xff, 0xff, (i % 251) as u8];
                let err = codec::decode::<RelayMessage>(&frame).expect_err("junk");
                assert!(matches!(err, DecodeError::Malformed { .. }));
                let action = rep.report(1, Reason::MalformedFrame, ms(i));
                first_action.get_or_insert(action);
            }
            1 => engine.handle_message(
                sim.now,
                1,
                RelayMessage::Transactions(vec![forged.clone()]),
                &mut host,
            ),
            2 => engine.handle_message(
                sim.now,
                1,
                RelayMessage::Announce((0..100).map(|j| filler(i as usize * 100 + j)).collect()),
                &mut host,
            ),
            _ => engine.handle_message(
                sim.now,
                1,
                RelayMessage::Request((0..100).map(|j| filler(j + 5_000_000)).collect()),
                &mut host,
            ),
        }
        // Every 100 junk messages peer 2 asks for a transaction: its reply is the next thing it
        // reads, whatever peer 1 has queued.
        if i % 100 == 99 {
            engine.handle_message(
                sim.now,
                2,
                RelayMessage::Request(vec![InvItem::Tx(honest.id())]),
                &mut host,
            );
            assert_eq!(
                engine.poll_transmit(&2),
                Some(RelayMessage::Transactions(vec![honest.clone()]))
            );
        }
        while let Some(e) = engine.poll_event() {
            if let RelayEvent::Penalty { peer, offence } = e {
                assert_eq!(peer, 1, "only the junk peer is penalised");
                rep.report(peer, Reason::Relay(offence), ms(i));
            }
        }
    }
    assert!(
        matches!(first_action, Some(Action::Ban { .. })),
        "the first malformed frame bans at once: {first_action:?}"
    );
    assert!(rep.is_banned(&1, ms(1_000)) && !rep.is_banned(&2, ms(1_000)));
    assert!(engine.queued_bytes(&1) <= PropagationConfig::default().max_peer_queue_bytes);
}

// ---- sync bounds -----------------------------------------------------------------------------

#[test]
fn headers_from_a_peer_that_never_sends_bodies_stay_within_max_pending_headers() {
    const PENDING: usize = 500;
    let key = Keypair::from_secret(&[41; 32]);
    let mut remote = TestChain::new(&key);
    for b in TestChain::build_on(&remote.genesis_header(), &key, 2_500, 1_000) {
        assert!(remote.import(&b));
    }
    let client = TestChain::new(&key);
    let config = SyncConfig {
        max_pending_headers: PENDING,
        ..SyncConfig::default()
    };
    let mut sched: SyncScheduler<u8> = SyncScheduler::new(config);
    let mut now = Instant::now();
    sched.on_status(now, 1, remote.status(), &client);
    let mut filled = false;
    let mut penalties = Vec::new();
    let mut disconnected = false;
    for round in 0..10 {
        while let Some(action) = sched.poll_action() {
            match action {
                SyncAction::Request {
                    peer,
                    id,
                    request: request @ SyncRequest::GetHeaders { .. },
                } => {
                    let reply = remote.answer(&request);
                    sched.on_response(now, peer, id, reply, &client);
                }
                // Bodies (and anything else) are never sent.
                SyncAction::Request { .. } => {}
                SyncAction::Penalize { peer, reason } => penalties.push((peer, reason)),
                SyncAction::Disconnect { .. } => disconnected = true,
            }
            let pending = sched.pending_headers();
            assert!(pending <= PENDING, "round {round}: {pending} headers held");
            filled |= pending == PENDING;
        }
        now += Duration::from_secs(60);
        sched.handle_timeout(now, &client);
    }
    assert!(filled, "the peer had enough headers to reach the bound");
    assert!(penalties.contains(&(1, Reason::Stalled)), "{penalties:?}");
    assert!(disconnected, "the withholding peer is rotated out");
}
