//! The sync scenarios on a simulated clock: servers answer through the real `SyncServer` and
//! codec after a fixed delay; the client imports what the scheduler hands it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use playergold_primitives::codec;
use playergold_primitives::{
    Block, BlockHash, BlockHeader, Genesis, Height, Keypair, PublicKey, TimestampMs, Work,
};
use playergold_protocol::Capabilities;
use playergold_protocol::reputation::Reason;
use playergold_protocol::sync::{
    Status, SyncAction, SyncConfig, SyncHost, SyncRequest, SyncResponse, SyncScheduler,
    SyncServeHost, SyncServer, SyncState,
};

/// A chain: every block and its cumulative work, the best chain by height.
#[derive(Clone)]
pub(crate) struct ChainHost {
    genesis: BlockHash,
    blocks: HashMap<BlockHash, (Block, Work)>,
    best: Vec<BlockHash>,
    validators: HashSet<PublicKey>,
}

impl ChainHost {
    fn new(genesis: &Block, validators: HashSet<PublicKey>) -> ChainHost {
        ChainHost {
            genesis: genesis.hash(),
            blocks: HashMap::from([(genesis.hash(), (genesis.clone(), Work(0)))]),
            best: vec![genesis.hash()],
            validators,
        }
    }

    fn tip_header(&self) -> BlockHeader {
        self.blocks[self.best.last().expect("genesis")]
            .0
            .header
            .clone()
    }

    /// Imports a block whose parent is known; the longest chain wins. False if refused.
    fn import(&mut self, block: Block) -> bool {
        let hash = block.hash();
        let Some((parent, work)) = self.blocks.get(&block.header.parent).cloned() else {
            return false;
        };
        if self.check_header(&block.header, &parent.header).is_none() {
            return false;
        }
        let work = Work(work.0 + 1);
        let best_work = self.blocks[self.best.last().expect("genesis")].1;
        self.blocks.insert(hash, (block.clone(), work));
        if work > best_work {
            // Rebuild the best chain back from the new tip.
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

    /// Extends the best chain by `n` blocks signed by `key`.
    fn extend(&mut self, key: &Keypair, n: u64) {
        for _ in 0..n {
            let parent = self.tip_header();
            let block = Block::build(
                key,
                parent.hash(),
                Height(parent.height.0 + 1),
                TimestampMs(parent.timestamp_ms.0 + 1_000),
                vec![],
            );
            assert!(self.import(block));
        }
    }

    fn height(&self) -> u64 {
        self.best.len() as u64 - 1
    }
}

impl SyncHost for ChainHost {
    fn genesis(&self) -> BlockHash {
        self.genesis
    }
    fn tip(&self) -> (BlockHash, Height, Work) {
        let hash = *self.best.last().expect("genesis");
        (hash, Height(self.height()), self.blocks[&hash].1)
    }
    fn locator(&self) -> Vec<BlockHash> {
        let mut out = Vec::new();
        let mut i = self.best.len() - 1;
        let mut step = 1;
        loop {
            out.push(self.best[i]);
            if i == 0 {
                break;
            }
            if out.len() >= 10 {
                step *= 2;
            }
            i = i.saturating_sub(step);
        }
        out
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
            && header.timestamp_ms > parent.timestamp_ms
            && self.validators.contains(&header.producer)
            && header.verify_signature().is_ok();
        ok.then_some(Work(1))
    }
}

impl SyncServeHost for ChainHost {
    fn status(&self) -> Status {
        let (best_hash, best_height, cumulative_work) = self.tip();
        Status {
            genesis: self.genesis,
            best_hash,
            best_height,
            cumulative_work,
            capabilities: Capabilities::NONE,
        }
    }
    fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<BlockHeader> {
        let start = locator
            .iter()
            .find_map(|h| self.best.iter().position(|b| b == h))
            .map_or(0, |i| i + 1);
        self.best[start.min(self.best.len())..]
            .iter()
            .take(max)
            .map(|h| self.blocks[h].0.header.clone())
            .collect()
    }
    fn block(&self, hash: &BlockHash) -> Option<Block> {
        self.blocks.get(hash).map(|(b, _)| b.clone())
    }
}

/// How a simulated server behaves.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Honest,
    /// Answers everything but `GetBlocks`.
    WithholdsBodies,
}

struct Server {
    chain: ChainHost,
    behaviour: Behaviour,
    serve: SyncServer<u8>,
    /// Claimed status (an attacker may lie).
    status: Option<Status>,
}

struct Outcome {
    penalties: Vec<(u8, Reason)>,
    disconnects: Vec<(u8, bool)>,
    blocks_requested: usize,
    max_pending_headers: usize,
}

const RTT: Duration = Duration::from_millis(20);

fn run(client: &mut ChainHost, servers: &mut BTreeMap<u8, Server>, config: SyncConfig) -> Outcome {
    let mut sched: SyncScheduler<u8> = SyncScheduler::new(config);
    let mut now = Instant::now();
    let end = now + Duration::from_secs(600);
    let mut inbox: Vec<(Instant, u8, Vec<u8>)> = Vec::new();
    let mut out = Outcome {
        penalties: Vec::new(),
        disconnects: Vec::new(),
        blocks_requested: 0,
        max_pending_headers: 0,
    };
    for (id, s) in servers.iter() {
        let status = s.status.clone().unwrap_or_else(|| s.chain.status());
        sched.on_status(now, *id, status, client);
    }
    loop {
        while let Some(action) = sched.poll_action() {
            match action {
                SyncAction::Request { peer, request } => {
                    let Some(server) = servers.get_mut(&peer) else {
                        continue;
                    };
                    if let SyncRequest::GetBlocks(h) = &request {
                        out.blocks_requested += h.len();
                        if server.behaviour == Behaviour::WithholdsBodies {
                            continue;
                        }
                    }
                    let request: SyncRequest =
                        codec::decode(&codec::encode(&request)).expect("request codec");
                    if let Ok(resp) = server.serve.serve(now, 0, request, &server.chain) {
                        inbox.push((now + RTT, peer, codec::encode(&resp)));
                    }
                }
                SyncAction::Penalize { peer, reason } => out.penalties.push((peer, reason)),
                SyncAction::Disconnect { peer, penalize } => {
                    out.disconnects.push((peer, penalize));
                    servers.remove(&peer);
                }
            }
        }
        out.max_pending_headers = out.max_pending_headers.max(sched.pending_headers());
        inbox.sort_by_key(|(t, ..)| *t);
        let next_msg = inbox.first().map(|(t, ..)| *t);
        let next = match (next_msg, sched.poll_timeout()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        if next > end {
            break;
        }
        now = now.max(next);
        if next_msg == Some(next) {
            let (_, peer, bytes) = inbox.remove(0);
            let resp: SyncResponse = codec::decode(&bytes).expect("response codec");
            sched.on_response(now, peer, resp, client);
            for (block, from) in sched.take_ready(now, client) {
                if !client.import(block) {
                    sched.on_invalid_block(now, from, client);
                    break;
                }
            }
        } else {
            sched.handle_timeout(now, client);
        }
    }
    assert_eq!(sched.progress(now, client).state, SyncState::Synced);
    out
}

fn setup(blocks: u64) -> (Keypair, Block, ChainHost) {
    let key = Keypair::from_secret(&[77; 32]);
    let genesis = Genesis::devnet("syncnet", vec![key.public()], TimestampMs(0))
        .expect("genesis")
        .block();
    let mut chain = ChainHost::new(&genesis, HashSet::from([key.public()]));
    chain.extend(&key, blocks);
    (key, genesis, chain)
}

/// An honest server. Its rate limit is lifted: the simulated client keeps two requests in flight
/// per peer at a 20 ms round trip, above the default serving rate, and a rate-limited request is
/// dropped unanswered here (the serving limit itself is tested in `serving_is_rate_limited`).
fn honest(chain: &ChainHost) -> Server {
    Server {
        chain: chain.clone(),
        behaviour: Behaviour::Honest,
        serve: SyncServer::with_rate(1e6, 1e6),
        status: None,
    }
}

#[test]
fn a_late_joiner_reaches_the_tip_of_a_5000_block_network() {
    let (key, genesis, chain) = setup(5_000);
    let mut servers: BTreeMap<u8, Server> = (1..=5).map(|i| (i, honest(&chain))).collect();
    let mut client = ChainHost::new(&genesis, HashSet::from([key.public()]));
    let out = run(&mut client, &mut servers, SyncConfig::default());
    assert_eq!(client.tip(), chain.tip());
    assert_eq!(out.blocks_requested, 5_000, "each body fetched once");
    assert!(out.penalties.is_empty(), "{:?}", out.penalties);
}

#[test]
fn a_node_50_blocks_behind_downloads_only_those_50() {
    let (key, genesis, chain) = setup(1_000);
    let mut client = ChainHost::new(&genesis, HashSet::from([key.public()]));
    for h in &chain.best[1..951] {
        assert!(client.import(chain.blocks[h].0.clone()));
    }
    let mut servers: BTreeMap<u8, Server> = (1..=3).map(|i| (i, honest(&chain))).collect();
    let out = run(&mut client, &mut servers, SyncConfig::default());
    assert_eq!(client.tip(), chain.tip());
    assert_eq!(out.blocks_requested, 50);
}

#[test]
fn a_stalling_peer_is_penalised_and_sync_completes_from_the_others() {
    let (key, genesis, chain) = setup(600);
    let mut servers: BTreeMap<u8, Server> = (1..=3).map(|i| (i, honest(&chain))).collect();
    servers.get_mut(&2).expect("server 2").behaviour = Behaviour::WithholdsBodies;
    let mut client = ChainHost::new(&genesis, HashSet::from([key.public()]));
    let out = run(&mut client, &mut servers, SyncConfig::default());
    assert_eq!(client.tip(), chain.tip());
    assert!(out.penalties.contains(&(2, Reason::Stalled)));
    assert!(
        out.penalties.iter().all(|(p, _)| *p == 2),
        "only the staller: {:?}",
        out.penalties
    );
}

#[test]
fn a_flood_of_invalid_headers_is_refused_with_bounded_memory() {
    let (key, genesis, chain) = setup(300);
    // The attacker signs a long chain with a key that is no validator and claims huge work.
    let stranger = Keypair::from_secret(&[13; 32]);
    let mut fake = ChainHost::new(&genesis, HashSet::from([stranger.public()]));
    fake.extend(&stranger, 5_000);
    let mut claimed = fake.status();
    claimed.cumulative_work = Work(u128::MAX / 2);
    let mut servers = BTreeMap::from([
        (
            1,
            Server {
                chain: fake,
                behaviour: Behaviour::Honest,
                serve: SyncServer::default(),
                status: Some(claimed),
            },
        ),
        (2, honest(&chain)),
    ]);
    let mut client = ChainHost::new(&genesis, HashSet::from([key.public()]));
    let config = SyncConfig {
        max_pending_headers: 1_000,
        ..SyncConfig::default()
    };
    let out = run(&mut client, &mut servers, config);
    assert_eq!(client.tip(), chain.tip());
    assert!(out.penalties.contains(&(1, Reason::InvalidHeaders)));
    assert!(out.max_pending_headers <= 1_000);
}

#[test]
fn a_peer_of_another_network_is_disconnected_without_penalty() {
    let (key, genesis, chain) = setup(5);
    let other = Genesis::devnet("othernet", vec![key.public()], TimestampMs(0))
        .expect("genesis")
        .block();
    let mut foreign = honest(&ChainHost::new(&other, HashSet::from([key.public()])));
    foreign.chain.extend(&key, 10);
    let mut servers = BTreeMap::from([(1, foreign), (2, honest(&chain))]);
    let mut client = ChainHost::new(&genesis, HashSet::from([key.public()]));
    let out = run(&mut client, &mut servers, SyncConfig::default());
    assert_eq!(out.disconnects, vec![(1, false)]);
    assert!(out.penalties.is_empty());
    assert_eq!(client.tip(), chain.tip());
}

#[test]
fn serving_is_rate_limited_and_bounded() {
    let (_, _, chain) = setup(3_000);
    let mut server: SyncServer<u8> = SyncServer::default();
    let start = Instant::now();
    let asks = SyncRequest::GetHeaders {
        locator: vec![chain.genesis],
        max: u32::MAX,
    };
    // 1,000 requests in one second: the burst plus the rate are answered, no more.
    let answered = (0..1_000u64)
        .filter_map(|i| {
            server
                .serve(start + Duration::from_millis(i), 1, asks.clone(), &chain)
                .ok()
        })
        .inspect(|r| {
            // Never more than the protocol limit, whatever was asked.
            assert!(matches!(r, SyncResponse::Headers(h) if h.len() == 2_000));
        })
        .count();
    let max = (playergold_protocol::sync::SERVE_BURST
        + playergold_protocol::sync::SERVE_RATE_PER_SEC) as usize
        + 1;
    assert!(answered <= max && answered >= max - 2, "{answered}");
}
