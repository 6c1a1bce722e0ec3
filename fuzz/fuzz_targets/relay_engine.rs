//! The propagation engine under a random schedule: four fake peers send raw frames (through the
//! real decoder) and messages built from valid, forged and stale fixtures; they connect, leave,
//! read their queues or not; the node submits its own items; a fake clock advances and timers
//! fire. Penalties feed a `Reputation`, whose disconnects and bans remove the peer.
//!
//! Checked after every step: every queue toward a peer stays within `max_peer_queue_bytes`;
//! everything the engine sends passes our own decoder and carries only valid items (it relays
//! nothing invalid); a valid transaction that arrives ends up in the mempool even when a forged
//! copy with the same id came first; after `handle_timeout(now)` no timer is left at or before
//! `now`; scores stay bounded and reason logs capped.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use playergold_fuzz::{RelayChain, fixtures, frame, hash, pick, small};
use playergold_primitives::codec;
use playergold_primitives::{BlockHash, TimestampMs, TxId};
use playergold_protocol::Capabilities;
use playergold_protocol::relay::{
    CompactBlock, Fanout, InvItem, MAX_RELAY_FRAME_BYTES, PropagationConfig, RelayEngine,
    RelayEvent, RelayMessage, ShortId, Strategy,
};
use playergold_protocol::reputation::{
    Action, MAX_SCORE, MIN_SCORE, REASON_LOG_LEN, Reason, Reputation, ReputationConfig,
};

const PEERS: u8 = 4;
/// Small enough that a peer that never reads fills it within a run.
const QUEUE_LIMIT: usize = 16 * 1024;

struct World {
    engine: RelayEngine<u8>,
    host: RelayChain,
    rep: Reputation<u8>,
    start: Instant,
    now: Instant,
    connected: [bool; PEERS as usize],
    /// The host refused a transaction at some point (its id then stays deduplicated).
    ever_refused: bool,
}

impl World {
    fn ms(&self) -> TimestampMs {
        TimestampMs(self.now.duration_since(self.start).as_millis() as u64)
    }

    fn disconnect(&mut self, peer: u8) {
        self.engine.remove_peer(&peer);
        self.connected[peer as usize] = false;
    }

    /// Drains events: checks them and acts as the node adapter would.
    fn events(&mut self) {
        let f = fixtures();
        while let Some(e) = self.engine.poll_event() {
            let now = self.ms();
            let (peer, reason) = match e {
                RelayEvent::Penalty { peer, offence } => (peer, Reason::Relay(offence)),
                RelayEvent::UsefulDelivery(peer) => (peer, Reason::Delivered),
                RelayEvent::SlowPeer(peer) => {
                    self.disconnect(peer);
                    continue;
                }
                RelayEvent::NewTransaction { id, .. } => {
                    assert!(self.host.mempool.contains_key(&id) || self.host.in_chain(&id));
                    assert!(f.txs.iter().any(|t| t.id() == id));
                    continue;
                }
                RelayEvent::NewBlock { hash, .. } => {
                    assert!(self.host.blocks.contains_key(&hash));
                    continue;
                }
                RelayEvent::ChallengeReceived { challenge, .. } => {
                    assert!(challenge.verify().is_ok());
                    continue;
                }
                RelayEvent::SolutionToVerify {
                    challenge,
                    solution,
                } => {
                    assert!(challenge.verify().is_ok() && solution.verify().is_ok());
                    continue;
                }
                // Its import, reported as `NewBlock`, is what the checks above look at.
                RelayEvent::BlockReceived { .. }
                | RelayEvent::MissingParent { .. }
                | RelayEvent::SolutionSettled(_) => continue,
            };
            let action = self.rep.report(peer, reason, now);
            let score = self.rep.score(&peer, now);
            assert!((MIN_SCORE..=MAX_SCORE).contains(&score), "{score}");
            assert!(self.rep.log(&peer).len() <= REASON_LOG_LEN);
            if action != Action::None {
                self.disconnect(peer);
            }
        }
    }

    fn check_queues(&self) {
        for p in 0..PEERS {
            let q = self.engine.queued_bytes(&p);
            assert!(q <= QUEUE_LIMIT, "peer {p} has {q} bytes queued");
        }
    }

    /// `peer` reads up to `n` messages: each must pass our own decoder and carry valid items.
    fn read(&mut self, peer: u8, n: usize) {
        let f = fixtures();
        for _ in 0..n {
            let Some(msg) = self.engine.poll_transmit(&peer) else {
                break;
            };
            let bytes = codec::encode(&msg);
            assert!(bytes.len() <= MAX_RELAY_FRAME_BYTES);
            assert_eq!(
                codec::decode::<RelayMessage>(&bytes).as_ref(),
                Ok(&msg),
                "we send only what we would accept"
            );
            match &msg {
                RelayMessage::Transactions(txs) | RelayMessage::BlockTxns { txs, .. } => {
                    assert!(
                        txs.iter().all(|t| f.tx_is_valid(t)),
                        "relayed an invalid tx"
                    );
                }
                RelayMessage::Block(b) => assert!(f.block_is_valid(b), "served an invalid block"),
                RelayMessage::CompactBlock(c) => {
                    assert!(f.header_is_valid(&c.header), "relayed an invalid header")
                }
                RelayMessage::Challenge(c) => assert!(c.verify().is_ok()),
                RelayMessage::Solution {
                    solution,
                    challenge,
                } => {
                    assert!(solution.verify().is_ok());
                    assert!(challenge.as_ref().is_none_or(|c| c.verify().is_ok()));
                }
                RelayMessage::Verdict(v) => assert!(v.verify().is_ok()),
                RelayMessage::Announce(items) => {
                    for item in items {
                        if let InvItem::Tx(id) = item {
                            assert!(f.txs.iter().any(|t| t.id() == *id), "announced junk");
                        }
                    }
                }
                // Short-id announcements go only to peers that sent a salt; these peers send
                // none, so they get full-id `Announce`s (checked above).
                RelayMessage::AnnounceTxs(_) | RelayMessage::AnnounceTx(_) => {
                    panic!("short ids to a peer without a salt")
                }
                RelayMessage::Request(_)
                | RelayMessage::NotFound(_)
                | RelayMessage::BlockTxnsRequest { .. }
                | RelayMessage::RequestTxs(_)
                | RelayMessage::RequestTx(_)
                | RelayMessage::TxsNotFound(_) => {}
            }
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
            assert!(
                self.engine.poll_timeout().is_none_or(|t| t > self.now),
                "a timer is still due after handle_timeout"
            );
        }
    }

    fn deliver(&mut self, peer: u8, msg: RelayMessage) {
        if !self.connected[peer as usize] {
            return;
        }
        let valid_txs: Vec<TxId> = match &msg {
            RelayMessage::Transactions(txs) => txs
                .iter()
                .filter(|t| fixtures().tx_is_valid(t))
                .map(|t| t.id())
                .collect(),
            _ => Vec::new(),
        };
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("  {peer} sends {msg:?}");
        }
        self.engine
            .handle_message(self.now, peer, msg, &mut self.host);
        if !self.ever_refused {
            for id in valid_txs {
                assert!(
                    self.host.mempool.contains_key(&id) || self.host.in_chain(&id),
                    "a valid transaction was dropped"
                );
            }
        }
    }
}

fn items(u: &mut Unstructured<'_>) -> Vec<InvItem> {
    let f = fixtures();
    (0..small(u, 8))
        .map(|_| match small(u, 5) {
            0 => InvItem::Tx(pick(u, &f.txs).id()),
            1 => InvItem::Block(pick(u, &f.blocks).hash()),
            2 => InvItem::Challenge(pick(u, &f.challenges).id()),
            3 => InvItem::Solution(pick(u, &f.solutions).id()),
            4 => InvItem::Verdict(pick(u, &f.verdicts).id()),
            _ => InvItem::Tx(TxId(hash(u))),
        })
        .collect()
}

fn block_hash(u: &mut Unstructured<'_>) -> BlockHash {
    let f = fixtures();
    match small(u, 2) {
        0 => pick(u, &f.blocks).hash(),
        1 => pick(u, &f.bad_blocks).hash(),
        _ => BlockHash(hash(u)),
    }
}

fn message(u: &mut Unstructured<'_>) -> RelayMessage {
    let f = fixtures();
    let tx = |u: &mut Unstructured<'_>| {
        if small(u, 3) == 0 {
            pick(u, &f.forged_txs).clone()
        } else {
            pick(u, &f.txs).clone()
        }
    };
    let block = |u: &mut Unstructured<'_>| {
        if small(u, 3) == 0 {
            pick(u, &f.bad_blocks).clone()
        } else {
            pick(u, &f.blocks).clone()
        }
    };
    match small(u, 10) {
        0 => RelayMessage::Announce(items(u)),
        1 => RelayMessage::Request(items(u)),
        2 => RelayMessage::NotFound(items(u)),
        3 => RelayMessage::Transactions((0..small(u, 6)).map(|_| tx(u)).collect()),
        4 => {
            let b = block(u);
            let mut c = CompactBlock::of(&b);
            match small(u, 3) {
                0 => c.short_ids.truncate(small(u, 3)),
                // Short ids of other mempool transactions: a wrong body under a valid header.
                1 => {
                    for s in &mut c.short_ids {
                        *s = ShortId::new(&b.hash(), &pick(u, &f.txs).id());
                    }
                }
                2 => c.short_ids.reverse(),
                _ => {}
            }
            RelayMessage::CompactBlock(c)
        }
        5 => RelayMessage::BlockTxnsRequest {
            block: block_hash(u),
            indexes: (0..small(u, 4)).map(|_| small(u, 5) as u32).collect(),
        },
        6 => RelayMessage::BlockTxns {
            block: block_hash(u),
            txs: (0..small(u, 4)).map(|_| tx(u)).collect(),
        },
        7 => RelayMessage::Block(block(u)),
        8 => {
            let mut c = pick(u, &f.challenges).clone();
            c.hops_left = small(u, 4) as u8;
            RelayMessage::Challenge(c)
        }
        9 => RelayMessage::Solution {
            solution: pick(u, &f.solutions).clone(),
            challenge: (small(u, 1) == 0).then(|| pick(u, &f.challenges).clone()),
        },
        _ => RelayMessage::Verdict(pick(u, &f.verdicts).clone()),
    }
}

fn config(u: &mut Unstructured<'_>) -> PropagationConfig {
    PropagationConfig {
        tx_strategy: if small(u, 1) == 0 {
            Strategy::Gossip
        } else {
            Strategy::Flood
        },
        challenge_strategy: if small(u, 1) == 0 {
            Strategy::Directed
        } else {
            Strategy::Flood
        },
        gossip_factor: match small(u, 2) {
            0 => Fanout::Sqrt,
            1 => Fanout::Fixed(0),
            _ => Fanout::Fraction(0.5),
        },
        // Fewer than PEERS too, so relay-set membership and its refills are exercised.
        max_relay_peers: small(u, usize::from(PEERS)),
        duplicate_cache_size: 64,
        batch_size: 4,
        batch_delay: Duration::from_millis(5),
        request_timeout: Duration::from_millis(1_000),
        max_retries: 2,
        max_peer_queue_bytes: QUEUE_LIMIT,
        solution_validators: 2,
        verdict_quorum: 2,
        ..PropagationConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let mut u = Unstructured::new(data);
    let start = Instant::now();
    let mut w = World {
        engine: RelayEngine::new(config(&mut u), 7),
        host: RelayChain::new(),
        rep: Reputation::new(ReputationConfig::default()),
        start,
        now: start,
        connected: [true; PEERS as usize],
        ever_refused: false,
    };
    for p in 0..PEERS {
        w.engine.add_peer(p, Capabilities::from_bits(p));
    }
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    while !u.is_empty() {
        let peer = small(&mut u, PEERS as usize - 1) as u8;
        let op = small(&mut u, 9);
        if trace {
            eprintln!("peer {peer} op {op}");
        }
        match op {
            0 => {
                if let Ok(msg) = codec::decode::<RelayMessage>(frame(&mut u, 4096)) {
                    w.deliver(peer, msg);
                }
            }
            1 | 2 => {
                let msg = message(&mut u);
                w.deliver(peer, msg);
            }
            3 => {
                let ms = small(&mut u, 1_500) as u64;
                w.advance(ms);
            }
            4 => {
                let n = small(&mut u, 8);
                w.read(peer, n);
            }
            5 => {
                let tx = if small(&mut u, 3) == 0 {
                    pick(&mut u, &f.forged_txs).clone()
                } else {
                    pick(&mut u, &f.txs).clone()
                };
                let _ = w.engine.submit_transaction(w.now, tx, &mut w.host);
            }
            6 => {
                let block = pick(&mut u, &f.blocks).clone();
                use playergold_protocol::relay::{BlockVerdict, RelayHost};
                if w.host.submit_block(block.clone()) == BlockVerdict::Imported {
                    w.engine.propagate_block(w.now, block);
                }
            }
            7 => match small(&mut u, 2) {
                0 => {
                    let c = pick(&mut u, &f.challenges[..2]).clone();
                    w.engine.broadcast_challenge(w.now, c);
                }
                1 => w.engine.submit_solution(pick(&mut u, &f.solutions).clone()),
                _ => w.engine.submit_verdict(pick(&mut u, &f.verdicts).clone()),
            },
            8 => {
                let i = peer as usize;
                if w.connected[i] {
                    w.disconnect(peer);
                } else if !w.rep.is_banned(&peer, w.ms()) {
                    w.engine
                        .add_peer(peer, Capabilities::from_bits(small(&mut u, 7) as u8));
                    w.connected[i] = true;
                }
            }
            _ => {
                if small(&mut u, 1) == 0 {
                    w.host.refuse_txs = !w.host.refuse_txs;
                    w.ever_refused = true;
                } else {
                    w.host.refuse_blocks = !w.host.refuse_blocks;
                }
            }
        }
        w.events();
        w.check_queues();
        assert!(w.engine.peer_count() <= PEERS as usize);
    }
    for p in 0..PEERS {
        w.read(p, usize::MAX);
        assert_eq!(w.engine.queued_bytes(&p), 0);
    }
});
