//! The sync client and server under a random schedule. Four fake peers: two serve the fixture
//! chain, one a heavier fork of it, one only a short prefix. Each request the scheduler makes is
//! answered honestly (through a real `SyncServer`, so `Busy` happens too), answered with junk
//! (header runs with gaps, swaps and a stranger's header; mismatched or forged bodies; raw frames
//! through the real decoder; the wrong kind of reply), failed, answered twice, or left to time
//! out. Peers announce tips, come and go; blocks also arrive by relay (reorgs); the fake clock
//! advances and timers fire; our own server answers raw and built requests.
//!
//! Checked after every step: pending headers stay within `max_pending_headers`; every request
//! the scheduler makes passes our own decoder and stays within its limits; it never has more
//! requests in flight than it asked for and we have not answered; blocks handed to import come in
//! chain order and match their validated headers; after `handle_timeout(now)` no timer is left
//! at or before `now`; served replies stay within the protocol limits and decode; scores stay
//! bounded.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use playergold_fuzz::{FORK_AT, SyncChain, fixtures, frame, hash, pick, small};
use playergold_primitives::codec;
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Height, TimestampMs, Work, merkle_root,
};
use playergold_protocol::Capabilities;
use playergold_protocol::reputation::{Action, MAX_SCORE, MIN_SCORE, Reputation, ReputationConfig};
use playergold_protocol::sync::{
    MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REQUEST, MAX_LOCATOR_LEN, RequestId, Status,
    SyncAction, SyncConfig, SyncRequest, SyncResponse, SyncScheduler, SyncServeHost, SyncServer,
};

const PEERS: u8 = 4;

struct World {
    config: SyncConfig,
    sched: SyncScheduler<u8>,
    /// What each peer serves, and its server.
    remotes: Vec<(SyncChain, SyncServer<u8>)>,
    /// Our own server and chain.
    server: SyncServer<u8>,
    host: SyncChain,
    /// Requests the scheduler asked for that we have not answered (or answered and kept, to
    /// answer again).
    outstanding: Vec<(u8, RequestId, SyncRequest)>,
    rep: Reputation<u8>,
    start: Instant,
    now: Instant,
}

impl World {
    fn ms(&self) -> TimestampMs {
        TimestampMs(self.now.duration_since(self.start).as_millis() as u64)
    }

    /// Drains actions: checks them and acts as the node adapter would.
    fn actions(&mut self) {
        let pending = self.sched.pending_headers();
        assert!(
            pending <= self.config.max_pending_headers,
            "{pending} headers held"
        );
        while let Some(action) = self.sched.poll_action() {
            match action {
                SyncAction::Request { peer, id, request } => {
                    let bytes = codec::encode(&request);
                    assert_eq!(
                        codec::decode::<SyncRequest>(&bytes).as_ref(),
                        Ok(&request),
                        "we ask only what a server would accept"
                    );
                    match &request {
                        SyncRequest::GetBlocks(h) => {
                            let most = self
                                .config
                                .blocks_per_request
                                .clamp(1, MAX_BLOCKS_PER_REQUEST);
                            assert!(!h.is_empty() && h.len() <= most, "{} hashes", h.len());
                        }
                        SyncRequest::GetHeaders { locator, max } => {
                            assert!(locator.len() <= MAX_LOCATOR_LEN);
                            assert!(*max <= MAX_HEADERS_PER_REQUEST);
                        }
                        SyncRequest::Status(_) => {}
                    }
                    assert!(
                        self.outstanding.iter().all(|(_, i, _)| *i != id),
                        "request id {id} reused"
                    );
                    self.outstanding.push((peer, id, request));
                }
                SyncAction::Penalize { peer, reason } => {
                    let now = self.ms();
                    let action = self.rep.report(peer, reason, now);
                    let score = self.rep.score(&peer, now);
                    assert!((MIN_SCORE..=MAX_SCORE).contains(&score), "{score}");
                    if action != Action::None {
                        self.sched.remove_peer(self.now, &peer, &self.host);
                    }
                }
                SyncAction::Disconnect { peer, .. } => {
                    self.sched.remove_peer(self.now, &peer, &self.host);
                }
            }
        }
        assert!(
            self.sched.in_flight() <= self.outstanding.len(),
            "{} in flight, {} asked and unanswered",
            self.sched.in_flight(),
            self.outstanding.len()
        );
    }

    /// Takes (or, sometimes, copies) one outstanding request.
    fn take(&mut self, u: &mut Unstructured<'_>) -> Option<(u8, RequestId, SyncRequest)> {
        if self.outstanding.is_empty() {
            return None;
        }
        let i = small(u, self.outstanding.len() - 1);
        if small(u, 7) == 0 {
            Some(self.outstanding[i].clone())
        } else {
            Some(self.outstanding.swap_remove(i))
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        if self.sched.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sched.handle_timeout(self.now, &self.host);
            assert!(
                self.sched.poll_timeout().is_none_or(|t| t > self.now),
                "a timer is still due after handle_timeout"
            );
        }
    }

    fn import_ready(&mut self) {
        let f = fixtures();
        let ready = self.sched.take_ready(self.now, &self.host);
        let mut prev: Option<BlockHash> = None;
        for (block, from) in ready {
            assert!(f.header_is_valid(&block.header), "an unvalidated header");
            assert_eq!(merkle_root(&block.tx_ids()), block.header.tx_root);
            if let Some(p) = prev {
                assert_eq!(block.header.parent, p, "blocks out of chain order");
            }
            prev = Some(block.hash());
            if !self.host.import(&block) && !self.host.has(&block.hash()) {
                self.sched.on_invalid_block(self.now, from, &self.host);
                break;
            }
        }
    }

    fn serve(&mut self, peer: u8, request: SyncRequest) {
        let asked = match &request {
            SyncRequest::GetHeaders { max, .. } => *max,
            _ => 0,
        };
        let resp = self.server.serve(self.now, peer, request, &self.host);
        let bytes = codec::encode(&resp);
        assert_eq!(codec::decode::<SyncResponse>(&bytes).as_ref(), Ok(&resp));
        match resp {
            SyncResponse::Headers(h) => {
                assert!(h.len() <= asked.min(MAX_HEADERS_PER_REQUEST) as usize)
            }
            SyncResponse::Blocks(b) => assert!(b.len() <= MAX_BLOCKS_PER_REQUEST),
            _ => {}
        }
    }
}

fn any_sync_block(u: &mut Unstructured<'_>) -> &'static Block {
    let f = fixtures();
    if small(u, 2) == 0 {
        pick(u, &f.fork)
    } else {
        pick(u, &f.chain)
    }
}

fn status(u: &mut Unstructured<'_>) -> Status {
    let f = fixtures();
    let best = any_sync_block(u);
    Status {
        genesis: if small(u, 7) == 0 {
            BlockHash(hash(u))
        } else {
            f.genesis.hash()
        },
        best_hash: best.hash(),
        best_height: if small(u, 3) == 0 {
            Height(u.arbitrary().unwrap_or(0))
        } else {
            best.header.height
        },
        cumulative_work: if small(u, 3) == 0 {
            Work(u.arbitrary().unwrap_or(0))
        } else {
            Work(u128::from(best.header.height.0))
        },
        capabilities: Capabilities::from_bits(small(u, 7) as u8),
    }
}

fn headers(u: &mut Unstructured<'_>) -> Vec<BlockHeader> {
    let f = fixtures();
    let path: Vec<&Block> = if small(u, 1) == 0 {
        f.chain.iter().collect()
    } else {
        f.chain[..FORK_AT].iter().chain(&f.fork).collect()
    };
    let from = small(u, path.len() - 1);
    let len = small(u, 14);
    let mut out: Vec<BlockHeader> = path[from..(from + len).min(path.len())]
        .iter()
        .map(|b| b.header.clone())
        .collect();
    if !out.is_empty() {
        let i = small(u, out.len() - 1);
        match small(u, 5) {
            0 => {
                out.remove(i);
            }
            1 => out.swap(0, i),
            2 => out[i] = f.bad_blocks[0].header.clone(),
            3 => out[i].signature = f.bad_blocks[1].header.signature,
            _ => {}
        }
    }
    out
}

fn blocks(u: &mut Unstructured<'_>) -> Vec<Block> {
    let f = fixtures();
    (0..small(u, 4))
        .map(|_| {
            let mut b = any_sync_block(u).clone();
            match small(u, 4) {
                0 => b.txs.reverse(),
                1 => b.txs[0].signature = f.forged_txs[0].signature,
                2 => b.txs.truncate(1),
                _ => {}
            }
            b
        })
        .collect()
}

fn junk_response(u: &mut Unstructured<'_>) -> SyncResponse {
    match small(u, 3) {
        0 => SyncResponse::Headers(headers(u)),
        1 => SyncResponse::Blocks(blocks(u)),
        2 => SyncResponse::Busy {
            retry_after_ms: u.arbitrary().unwrap_or(0),
        },
        _ => SyncResponse::Status(status(u)),
    }
}

fn request(u: &mut Unstructured<'_>) -> SyncRequest {
    let f = fixtures();
    match small(u, 2) {
        0 => SyncRequest::GetHeaders {
            locator: (0..small(u, 4)).map(|_| any_sync_block(u).hash()).collect(),
            max: u.arbitrary().unwrap_or(0),
        },
        1 => SyncRequest::GetBlocks(
            (0..small(u, MAX_BLOCKS_PER_REQUEST))
                .map(|_| any_sync_block(u).hash())
                .collect(),
        ),
        _ => SyncRequest::Status(Status {
            genesis: f.genesis.hash(),
            best_hash: f.genesis.hash(),
            best_height: Height(0),
            cumulative_work: Work(0),
            capabilities: Capabilities::NONE,
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let mut u = Unstructured::new(data);
    let config = SyncConfig {
        max_in_flight_per_peer: 1 + small(&mut u, 2),
        blocks_per_request: 1 + small(&mut u, 4),
        window: 8,
        window_bytes: 16 * 1024,
        max_pending_headers: 10,
        initial_stall_timeout: Duration::from_secs(2),
        max_stall_timeout: Duration::from_secs(8),
        max_stalls: 3,
        ..SyncConfig::default()
    };
    let start = Instant::now();
    // What peers 0..4 serve: the chain (twice, one server slow to answer), the fork, a prefix.
    static REMOTES: OnceLock<[SyncChain; 3]> = OnceLock::new();
    let [chain, fork, prefix] = REMOTES
        .get_or_init(|| {
            [
                SyncChain::holding(&f.chain),
                SyncChain::holding(f.chain[..FORK_AT].iter().chain(&f.fork)),
                SyncChain::holding(&f.chain[..12]),
            ]
        })
        .clone();
    let remotes = vec![
        (chain.clone(), SyncServer::default()),
        (chain, SyncServer::with_rate(2.0, 2.0)),
        (fork, SyncServer::default()),
        (prefix, SyncServer::default()),
    ];
    let mut w = World {
        sched: SyncScheduler::new(config.clone()),
        config,
        remotes,
        server: SyncServer::default(),
        host: SyncChain::default(),
        outstanding: Vec::new(),
        rep: Reputation::new(ReputationConfig::default()),
        start,
        now: start,
    };
    for p in 0..PEERS {
        let s = w.remotes[p as usize].0.status();
        w.sched.on_status(w.now, p, s, &w.host);
    }
    w.actions();
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    while !u.is_empty() {
        let peer = small(&mut u, PEERS as usize - 1) as u8;
        let op = small(&mut u, 12);
        if trace {
            eprintln!("peer {peer} op {op} at {:?}", w.ms());
        }
        match op {
            0 => {
                if let Ok(resp) = codec::decode::<SyncResponse>(frame(&mut u, 4096))
                    && let Some((p, id, _)) = w.take(&mut u)
                {
                    w.sched.on_response(w.now, p, id, resp, &w.host);
                }
            }
            1 => {
                let s = status(&mut u);
                w.sched.on_status(w.now, peer, s, &w.host);
            }
            2 | 3 => {
                // An honest answer from the peer's own chain.
                if let Some((p, id, req)) = w.take(&mut u) {
                    let (chain, server) = &mut w.remotes[p as usize];
                    let resp = server.serve(w.now, 0, req, chain);
                    w.sched.on_response(w.now, p, id, resp, &w.host);
                }
            }
            4 => {
                if let Some((p, id, req)) = w.take(&mut u) {
                    let resp = junk_response(&mut u);
                    // Sometimes from the wrong peer: that reply does not answer the request.
                    let from = if small(&mut u, 3) == 0 { peer } else { p };
                    if from != p && w.outstanding.iter().all(|(_, i, _)| *i != id) {
                        w.outstanding.push((p, id, req));
                    }
                    w.sched.on_response(w.now, from, id, resp, &w.host);
                }
            }
            5 => {
                let ms = small(&mut u, 5_000) as u64;
                w.advance(ms);
            }
            6 => w.import_ready(),
            7 => {
                // A block that came by relay: may extend our chain or switch to the fork.
                let b = any_sync_block(&mut u);
                w.host.import(b);
                if small(&mut u, 1) == 0 {
                    w.sched.on_orphan(w.now, peer, b.hash(), &w.host);
                } else {
                    let work = Work(u128::from(b.header.height.0));
                    w.sched
                        .on_announced(w.now, peer, b.hash(), b.header.height, work, &w.host);
                }
            }
            8 => {
                if small(&mut u, 1) == 0 {
                    w.sched.remove_peer(w.now, &peer, &w.host);
                    w.server.remove_peer(&peer);
                } else {
                    w.sched.add_peer(peer);
                }
            }
            9 => {
                if let Some((p, id, _)) = w.take(&mut u) {
                    w.sched.on_request_failed(w.now, p, id, &w.host);
                }
            }
            10 => {
                if let Ok(req) = codec::decode::<SyncRequest>(frame(&mut u, 1024)) {
                    w.serve(peer, req);
                }
            }
            11 => {
                let req = request(&mut u);
                w.serve(peer, req);
            }
            _ => w.sched.on_invalid_block(w.now, peer, &w.host),
        }
        w.actions();
        let _ = w.sched.progress(w.now, &w.host);
    }
});
