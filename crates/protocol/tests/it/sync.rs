//! The sync scenarios on a simulated clock: servers answer through the real `SyncServer` and
//! codec after a fixed delay; the client imports what the scheduler hands it. The last tests run
//! whole networks of nodes (scheduler, server and partition detector each) on one clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use playergold_primitives::codec;
use playergold_primitives::{
    Amount, Block, BlockHash, BlockHeader, Genesis, Height, Keypair, Nonce, PublicKey, Signature,
    TimestampMs, Transaction, Work,
};
use playergold_protocol::Capabilities;
use playergold_protocol::partition::{
    NetworkState, PartitionConfig, PartitionDetector, PartitionEvent, TipInfo,
};
use playergold_protocol::reputation::Reason;
use playergold_protocol::sync::{
    MAX_BLOCKS_PER_REQUEST, MAX_BLOCKS_REPLY_BYTES, MAX_HEADERS_PER_REQUEST, RequestId,
    SERVE_BURST, SERVE_RATE_PER_SEC, STATUS_POLL_INTERVAL, Status, SyncAction, SyncConfig,
    SyncHost, SyncRequest, SyncResponse, SyncScheduler, SyncServeHost, SyncServer, SyncState,
};

/// A chain: every block and its cumulative work, the best chain by work (first seen on a tie).
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

    fn tip_hash(&self) -> BlockHash {
        *self.best.last().expect("genesis")
    }

    fn tip_header(&self) -> BlockHeader {
        self.blocks[&self.tip_hash()].0.header.clone()
    }

    /// Imports a block whose parent is known; the most work wins. False if refused.
    fn import(&mut self, block: Block) -> bool {
        let hash = block.hash();
        if self.blocks.contains_key(&hash) {
            return true;
        }
        let Some((parent, work)) = self.blocks.get(&block.header.parent).cloned() else {
            return false;
        };
        if self.check_header(&block.header, &parent.header).is_none() {
            return false;
        }
        let work = Work(work.0 + 1);
        let best_work = self.blocks[&self.tip_hash()].1;
        self.blocks.insert(hash, (block.clone(), work));
        if work > best_work && block.header.parent == self.tip_hash() {
            self.best.push(hash);
        } else if work > best_work {
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

    /// Builds `n` blocks signed by `key` on `parent`, `step_ms` apart; returns the last hash.
    fn extend_on(&mut self, parent: BlockHash, key: &Keypair, n: u64, step_ms: u64) -> BlockHash {
        let mut parent = self.blocks[&parent].0.header.clone();
        for _ in 0..n {
            let block = Block::build(
                key,
                parent.hash(),
                Height(parent.height.0 + 1),
                TimestampMs(parent.timestamp_ms.0 + step_ms),
                vec![],
            );
            parent = block.header.clone();
            assert!(self.import(block));
        }
        parent.hash()
    }

    /// Extends the best chain by `n` blocks signed by `key`.
    fn extend(&mut self, key: &Keypair, n: u64) {
        self.extend_on(self.tip_hash(), key, n, 1_000);
    }

    fn height(&self) -> u64 {
        self.best.len() as u64 - 1
    }

    /// Makes the branch ending at `tip` the best chain (to serve a branch of less or equal work).
    fn make_best(&mut self, tip: BlockHash) {
        let mut chain = vec![tip];
        let mut h = tip;
        while self.blocks[&h].0.header.height.0 > 0 {
            h = self.blocks[&h].0.header.parent;
            chain.push(h);
        }
        chain.reverse();
        self.best = chain;
    }

    fn on_best(&self, hash: &BlockHash) -> bool {
        self.blocks
            .get(hash)
            .is_some_and(|(b, _)| self.best.get(b.header.height.0 as usize) == Some(hash))
    }

    fn tip_info(&self) -> TipInfo {
        let (hash, height, work) = self.tip();
        TipInfo { hash, height, work }
    }
}

impl SyncHost for ChainHost {
    fn genesis(&self) -> BlockHash {
        self.genesis
    }
    fn tip(&self) -> (BlockHash, Height, Work) {
        let hash = self.tip_hash();
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
    fn has_block(&self, hash: &BlockHash) -> bool {
        self.blocks.contains_key(hash)
    }
}

impl SyncServeHost for ChainHost {
    fn status(&self) -> Status {
        SyncScheduler::<u8>::status_request(self, Capabilities::NONE)
    }
    fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<BlockHeader> {
        // Like the real chain: after the first locator hash on our best chain, else from
        // genesis.
        let start = locator
            .iter()
            .find(|h| self.on_best(h))
            .map_or(0, |h| self.blocks[h].0.header.height.0 as usize + 1);
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

impl Server {
    fn status(&self) -> Status {
        self.status.clone().unwrap_or_else(|| self.chain.status())
    }
}

#[derive(Default)]
struct Outcome {
    penalties: Vec<(u8, Reason)>,
    disconnects: Vec<(u8, bool)>,
    /// Every hash asked for in a `GetBlocks`, repeats included.
    requested: Vec<BlockHash>,
    /// Blocks each server sent.
    served: BTreeMap<u8, usize>,
    busy: usize,
    max_pending_headers: usize,
    states: Vec<SyncState>,
    max_target: u64,
    saw_eta: bool,
}

impl Outcome {
    fn served_total(&self) -> usize {
        self.served.values().sum()
    }
}

const RTT: Duration = Duration::from_millis(20);

/// A client node: its chain, its scheduler, replies on the way to it.
struct Client {
    chain: ChainHost,
    sched: SyncScheduler<u8>,
    now: Instant,
    inbox: Vec<(Instant, u8, RequestId, Vec<u8>)>,
    out: Outcome,
}

enum Until {
    /// Synced, nothing in flight.
    Idle,
    /// The clock reaches this.
    Time(Instant),
    /// The client's height reaches this (then it is "killed").
    Height(u64),
}

impl Client {
    fn new(chain: ChainHost, config: SyncConfig) -> Client {
        Client {
            chain,
            sched: SyncScheduler::new(config),
            now: Instant::now(),
            inbox: Vec::new(),
            out: Outcome::default(),
        }
    }

    fn handshake(&mut self, servers: &BTreeMap<u8, Server>) {
        for (id, s) in servers {
            self.sched.on_status(self.now, *id, s.status(), &self.chain);
        }
    }

    /// Carries out the scheduler's actions against `servers`.
    fn flush(&mut self, servers: &mut BTreeMap<u8, Server>) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                SyncAction::Request { peer, id, request } => {
                    let Some(server) = servers.get_mut(&peer) else {
                        continue;
                    };
                    if let SyncRequest::GetBlocks(h) = &request {
                        assert!(h.len() <= MAX_BLOCKS_PER_REQUEST);
                        self.out.requested.extend(h);
                        if server.behaviour == Behaviour::WithholdsBodies {
                            continue;
                        }
                    }
                    if let SyncRequest::GetHeaders { max, .. } = &request {
                        assert!(*max <= MAX_HEADERS_PER_REQUEST);
                    }
                    let request: SyncRequest =
                        codec::decode(&codec::encode(&request)).expect("request codec");
                    let mut resp = server.serve.serve(self.now, 0, request, &server.chain);
                    match &mut resp {
                        SyncResponse::Blocks(b) => {
                            *self.out.served.entry(peer).or_default() += b.len();
                        }
                        SyncResponse::Busy { .. } => self.out.busy += 1,
                        SyncResponse::Status(s) => *s = server.status(),
                        SyncResponse::Headers(_) => {}
                    }
                    self.inbox
                        .push((self.now + RTT, peer, id, codec::encode(&resp)));
                }
                SyncAction::Penalize { peer, reason } => self.out.penalties.push((peer, reason)),
                SyncAction::Disconnect { peer, penalize } => {
                    self.out.disconnects.push((peer, penalize));
                    servers.remove(&peer);
                    self.inbox.retain(|(_, p, ..)| *p != peer);
                }
            }
        }
        self.out.max_pending_headers = self
            .out
            .max_pending_headers
            .max(self.sched.pending_headers());
        let p = self.sched.progress(self.now, &self.chain);
        if self.out.states.last() != Some(&p.state) {
            self.out.states.push(p.state);
        }
        self.out.max_target = self.out.max_target.max(p.target_height.0);
        self.out.saw_eta |= p.eta_secs.is_some() && p.blocks_per_sec > 0.0;
    }

    fn run(&mut self, servers: &mut BTreeMap<u8, Server>, until: Until) {
        let end = self.now + Duration::from_secs(600);
        loop {
            self.flush(servers);
            match until {
                Until::Idle => {
                    let state = self.sched.progress(self.now, &self.chain).state;
                    if self.inbox.is_empty()
                        && self.sched.in_flight() == 0
                        && state == SyncState::Synced
                    {
                        return;
                    }
                }
                Until::Height(h) if self.chain.height() >= h => return,
                _ => {}
            }
            self.inbox.sort_by_key(|(t, ..)| *t);
            let next_msg = self.inbox.first().map(|(t, ..)| *t);
            let next = match (next_msg, self.sched.poll_timeout()) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return,
            };
            let limit = match until {
                Until::Time(t) => t,
                _ => end,
            };
            if next > limit {
                self.now = limit;
                return;
            }
            self.now = self.now.max(next);
            if next_msg == Some(next) {
                let (_, peer, id, bytes) = self.inbox.remove(0);
                let resp: SyncResponse = codec::decode(&bytes).expect("response codec");
                self.sched
                    .on_response(self.now, peer, id, resp, &self.chain);
                self.import_ready();
            } else {
                self.sched.handle_timeout(self.now, &self.chain);
            }
        }
    }

    fn import_ready(&mut self) {
        for (block, from) in self.sched.take_ready(self.now, &self.chain) {
            if !self.chain.import(block) {
                self.sched.on_invalid_block(self.now, from, &self.chain);
                break;
            }
        }
    }
}

fn keys() -> (Keypair, Keypair) {
    (
        Keypair::from_secret(&[77; 32]),
        Keypair::from_secret(&[78; 32]),
    )
}

/// A genesis, a chain of `blocks` on it, validators: the two keys of `keys()`.
fn setup(blocks: u64) -> (Keypair, Block, ChainHost) {
    let (key, other) = keys();
    let genesis = Genesis::devnet(
        "syncnet",
        vec![key.public(), other.public()],
        TimestampMs(0),
    )
    .expect("genesis")
    .block();
    let mut chain = ChainHost::new(&genesis, HashSet::from([key.public(), other.public()]));
    chain.extend(&key, blocks);
    (key, genesis, chain)
}

fn empty(genesis: &Block) -> ChainHost {
    let (key, other) = keys();
    ChainHost::new(genesis, HashSet::from([key.public(), other.public()]))
}

/// An honest server with the default serving rate limit.
fn honest(chain: &ChainHost) -> Server {
    Server {
        chain: chain.clone(),
        behaviour: Behaviour::Honest,
        serve: SyncServer::default(),
        status: None,
    }
}

fn servers(chain: &ChainHost, n: u8) -> BTreeMap<u8, Server> {
    (1..=n).map(|i| (i, honest(chain))).collect()
}

#[test]
fn a_late_joiner_reaches_the_tip_of_a_5000_block_network() {
    let (_, genesis, chain) = setup(5_000);
    let mut servers = servers(&chain, 5);
    // Small requests, so that the default serving rate limit is reached and answers `Busy`.
    let config = SyncConfig {
        blocks_per_request: 16,
        ..SyncConfig::default()
    };
    let mut client = Client::new(empty(&genesis), config);
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert_eq!(out.served_total(), 5_000, "each body fetched once");
    assert!(out.penalties.is_empty(), "{:?}", out.penalties);
    // In parallel from every peer, and the serving rate limit answered `Busy`, not silence.
    assert!(out.served.values().all(|n| *n > 0), "{:?}", out.served);
    assert!(out.busy > 0);
    assert_eq!(
        out.states,
        vec![SyncState::Headers, SyncState::Blocks, SyncState::Synced]
    );
    assert_eq!(out.max_target, 5_000);
    assert!(out.saw_eta);
    assert_eq!(
        client.sched.progress(client.now, &client.chain).imported,
        5_000
    );
}

#[test]
fn a_node_50_blocks_behind_downloads_only_those_50() {
    let (_, genesis, chain) = setup(1_000);
    let mut local = empty(&genesis);
    for h in &chain.best[1..951] {
        assert!(local.import(chain.blocks[h].0.clone()));
    }
    let mut servers = servers(&chain, 3);
    let mut client = Client::new(local, SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.chain.tip(), chain.tip());
    assert_eq!(client.out.served_total(), 50);
    let asked: BTreeSet<BlockHash> = client.out.requested.iter().copied().collect();
    let missing: BTreeSet<BlockHash> = chain.best[951..].iter().copied().collect();
    assert_eq!(asked, missing);
    assert!(client.out.penalties.is_empty());
}

#[test]
fn a_stalling_peer_is_penalised_and_sync_completes_from_the_others() {
    let (_, genesis, chain) = setup(600);
    let mut servers = servers(&chain, 3);
    servers.get_mut(&2).expect("server 2").behaviour = Behaviour::WithholdsBodies;
    let mut client = Client::new(empty(&genesis), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert!(out.penalties.contains(&(2, Reason::Stalled)));
    assert!(
        out.penalties.iter().all(|(p, _)| *p == 2),
        "only the staller: {:?}",
        out.penalties
    );
    assert!(client.sched.metrics().stalls >= 1);
}

#[test]
fn a_flood_of_invalid_headers_is_refused_with_bounded_memory() {
    let (_, genesis, chain) = setup(300);
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
                status: Some(claimed),
                ..honest(&fake)
            },
        ),
        (2, honest(&chain)),
    ]);
    let config = SyncConfig {
        max_pending_headers: 1_000,
        ..SyncConfig::default()
    };
    let mut client = Client::new(empty(&genesis), config);
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert!(out.penalties.contains(&(1, Reason::InvalidHeaders)));
    assert!(out.max_pending_headers <= 1_000);
    assert_eq!(out.served.get(&1), None, "no body of the fake chain");
}

/// Our chain: 3,000 blocks. An old fork from block 100, 2,400 valid blocks long (less work),
/// served by a peer that claims enormous work: its headers are only counted past the bound,
/// never kept, and none of its bodies is fetched. The honest peer's chain still syncs.
#[test]
fn a_long_low_work_branch_is_only_counted_and_never_downloaded() {
    let (key, _, mut chain) = setup(3_000);
    let (_, other) = keys();
    let mut fork = chain.clone();
    let fork_point = chain.best[100];
    let fork_tip = fork.extend_on(fork_point, &other, 2_400, 700);
    fork.make_best(fork_tip);
    let local = chain.clone();
    chain.extend(&key, 200);
    let mut claimed = fork.status();
    claimed.cumulative_work = Work(1 << 60);
    let mut servers = BTreeMap::from([
        (
            1,
            Server {
                status: Some(claimed),
                ..honest(&fork)
            },
        ),
        (2, honest(&chain)),
    ]);
    let config = SyncConfig {
        max_pending_headers: 1_000,
        ..SyncConfig::default()
    };
    let mut client = Client::new(local, config);
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert!(
        out.max_pending_headers <= 1_000,
        "{}",
        out.max_pending_headers
    );
    assert!(client.sched.metrics().headers_counted >= 1_000);
    assert_eq!(out.served.get(&1), None, "no body of the low-work fork");
    assert_eq!(out.served_total(), 200);
    assert!(out.penalties.is_empty(), "valid data: {:?}", out.penalties);
}

/// We hold 1,500 blocks; a peer's branch forks at block 100 and is 2,900 blocks long. Proving it
/// heavier takes 1,401 headers, more than the 1,000 we keep: presync counts them, then the
/// branch is fetched again from the fork point and its bodies downloaded.
#[test]
fn a_heavier_branch_forking_deep_is_proven_in_presync_then_fetched() {
    let (_, genesis, chain) = setup(1_500);
    let (_, other) = keys();
    let mut branch = chain.clone();
    let tip = branch.extend_on(chain.best[100], &other, 2_900, 700);
    assert_eq!(branch.tip_hash(), tip);
    let mut servers = servers(&branch, 2);
    let config = SyncConfig {
        max_pending_headers: 1_000,
        ..SyncConfig::default()
    };
    let mut client = Client::new(chain.clone(), config);
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), branch.tip());
    assert!(out.max_pending_headers <= 1_000);
    assert!(client.sched.metrics().headers_counted > 0);
    assert_eq!(out.served_total(), 2_900);
    assert!(out.penalties.is_empty(), "{:?}", out.penalties);
    let _ = genesis;
}

/// Peer 1 claims the honest tip but serves another valid branch of the same length. The second
/// peer claiming that tip disagrees in the cross-check: the client fetches its branch instead,
/// never downloads a body of peer 1's, and penalises nobody (both branches are valid).
#[test]
fn a_tip_is_cross_checked_against_a_second_peer_and_a_lying_source_loses() {
    let (_, genesis, chain) = setup(300);
    let (_, other) = keys();
    let mut lie = empty(&genesis);
    lie.extend_on(genesis.hash(), &other, 300, 700);
    let mut servers = BTreeMap::from([
        (
            1,
            Server {
                status: Some(chain.status()),
                ..honest(&lie)
            },
        ),
        (2, honest(&chain)),
    ]);
    let mut client = Client::new(empty(&genesis), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert_eq!(
        out.served.get(&1),
        None,
        "nothing of the unconfirmed branch"
    );
    assert_eq!(client.sched.metrics().cross_check_mismatches, 1);
    assert!(out.penalties.is_empty(), "{:?}", out.penalties);
}

/// Two branches of equal work: the other one is downloaded so that the chain's fork choice can
/// compare them (this model keeps the first seen; the real chain orders by timestamp, producer
/// reputation, hash).
#[test]
fn an_equal_work_branch_is_fetched_for_fork_choice() {
    let (_, genesis, chain) = setup(100);
    let (_, other) = keys();
    let mut branch = chain.clone();
    let tip = branch.extend_on(chain.best[90], &other, 10, 700);
    branch.make_best(tip);
    let mut servers = servers(&branch, 2);
    let mut client = Client::new(chain.clone(), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    assert!(client.chain.has_block(&tip));
    assert_eq!(client.out.served_total(), 10);
    assert_eq!(
        client.chain.tip(),
        chain.tip(),
        "first seen wins the tie here"
    );
    let _ = genesis;
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
    let mut client = Client::new(empty(&genesis), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.out.disconnects, vec![(1, false)]);
    assert!(client.out.penalties.is_empty());
    assert_eq!(client.chain.tip(), chain.tip());
}

#[test]
fn serving_is_rate_limited_with_busy_and_bounded() {
    let (_, _, chain) = setup(3_000);
    let mut server: SyncServer<u8> = SyncServer::default();
    let start = Instant::now();
    let asks = SyncRequest::GetHeaders {
        locator: vec![chain.genesis],
        max: u32::MAX,
    };
    // 1,000 requests in one second: the burst plus the rate are answered, the rest told `Busy`.
    let replies: Vec<SyncResponse> = (0..1_000u64)
        .map(|i| server.serve(start + Duration::from_millis(i), 1, asks.clone(), &chain))
        .collect();
    let answered = replies
        .iter()
        .filter(|r| match r {
            // Never more than the protocol limit, whatever was asked.
            SyncResponse::Headers(h) => {
                assert_eq!(h.len(), MAX_HEADERS_PER_REQUEST as usize);
                true
            }
            SyncResponse::Busy { retry_after_ms } => {
                assert_eq!(*retry_after_ms, (1_000.0 / SERVE_RATE_PER_SEC) as u32);
                false
            }
            other => panic!("unexpected {other:?}"),
        })
        .count();
    let max = (SERVE_BURST + SERVE_RATE_PER_SEC) as usize + 1;
    assert!(answered <= max && answered >= max - 2, "{answered}");
    let m = server.metrics();
    assert_eq!((m.served + m.busy) as usize, replies.len());
    // Another peer is not affected.
    assert!(matches!(
        server.serve(start + Duration::from_millis(999), 2, asks, &chain),
        SyncResponse::Headers(_)
    ));
}

/// A host whose blocks are as large as the protocol allows.
struct FatBlocks;

impl SyncServeHost for FatBlocks {
    fn status(&self) -> Status {
        unreachable!("not asked")
    }
    fn headers_after(&self, _: &[BlockHash], max: usize) -> Vec<BlockHeader> {
        // A host that ignores `max`: the server must cut.
        let (_, _, chain) = setup(1);
        vec![chain.tip_header(); max + 10]
    }
    fn block(&self, hash: &BlockHash) -> Option<Block> {
        let key = Keypair::from_secret(&[5; 32]);
        let tx = Transaction {
            from: key.public(),
            to: key.public().address(),
            amount: Amount(1),
            fee: Amount(1),
            nonce: Nonce(0),
            timestamp_ms: TimestampMs(0),
            signature: Signature::ZERO,
        };
        let per_block = playergold_primitives::MAX_BLOCK_BYTES / codec::encoded_len(&tx) - 10;
        let mut b = Block::build(
            &key,
            *hash,
            Height(u64::from(hash.0[0])),
            TimestampMs(0),
            vec![tx; per_block],
        );
        b.header.height = Height(u64::from(hash.0[0]));
        Some(b)
    }
}

#[test]
fn a_reply_never_exceeds_the_count_and_byte_limits() {
    let mut server: SyncServer<u8> = SyncServer::with_rate(1e6, 1e6);
    let now = Instant::now();
    let hashes: Vec<BlockHash> = (0..40u8).map(|i| BlockHash([i; 32])).collect();
    let SyncResponse::Blocks(blocks) =
        server.serve(now, 1, SyncRequest::GetBlocks(hashes.clone()), &FatBlocks)
    else {
        panic!("blocks expected");
    };
    let bytes: usize = blocks.iter().map(codec::encoded_len).sum();
    assert!(!blocks.is_empty() && blocks.len() < MAX_BLOCKS_PER_REQUEST);
    assert!(bytes <= MAX_BLOCKS_REPLY_BYTES, "{bytes}");
    // In the requested order.
    for (b, h) in blocks.iter().zip(&hashes) {
        assert_eq!(b.header.parent, *h);
    }
    let SyncResponse::Headers(h) = server.serve(
        now,
        1,
        SyncRequest::GetHeaders {
            locator: vec![],
            max: 5_000,
        },
        &FatBlocks,
    ) else {
        panic!("headers expected");
    };
    assert_eq!(h.len(), MAX_HEADERS_PER_REQUEST as usize);
}

/// A `Busy` reply costs the peer nothing and its work goes to another peer.
#[test]
fn busy_replies_are_not_penalised_and_the_work_moves_on() {
    let (_, genesis, chain) = setup(400);
    let mut servers = servers(&chain, 2);
    // Peer 1 serves at a trickle: a burst of 2, then one request every 2 s.
    servers.get_mut(&1).expect("server 1").serve = SyncServer::with_rate(0.5, 2.0);
    let mut client = Client::new(empty(&genesis), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let out = &client.out;
    assert_eq!(client.chain.tip(), chain.tip());
    assert!(out.busy > 0);
    assert!(out.penalties.is_empty(), "{:?}", out.penalties);
    assert!(out.served[&2] > out.served.get(&1).copied().unwrap_or(0));
    assert_eq!(out.served_total(), 400);
}

#[test]
fn a_sync_killed_midway_resumes_from_what_was_stored() {
    let (_, genesis, chain) = setup(3_000);
    let mut servers = servers(&chain, 3);
    let mut first = Client::new(empty(&genesis), SyncConfig::default());
    first.handshake(&servers);
    first.run(&mut servers, Until::Height(1_200));
    // Killed: scheduler and replies in flight are gone; the chain store survives.
    let stored = first.chain.clone();
    let stored_height = stored.height();
    assert!((1_200..3_000).contains(&stored_height));
    let mut second = Client::new(stored.clone(), SyncConfig::default());
    second.now = first.now + Duration::from_secs(5);
    second.handshake(&servers);
    second.run(&mut servers, Until::Idle);
    assert_eq!(second.chain.tip(), chain.tip());
    assert!(
        second.out.requested.iter().all(|h| !stored.has_block(h)),
        "nothing stored is fetched again"
    );
    assert_eq!(second.out.served_total() as u64, 3_000 - stored_height);
}

/// The relay engine saw a block whose parent we lack: its branch is synced from that peer,
/// though the peer's last status showed nothing new.
#[test]
fn an_orphan_block_triggers_sync_of_its_branch() {
    let (key, genesis, mut chain) = setup(100);
    let mut servers = servers(&chain, 1);
    let mut client = Client::new(chain.clone(), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.out.served_total(), 0);
    chain.extend(&key, 3);
    servers.insert(1, honest(&chain));
    client
        .sched
        .on_orphan(client.now, 1, chain.tip_hash(), &client.chain);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.chain.tip(), chain.tip());
    assert_eq!(client.out.served_total(), 3);
    let _ = genesis;
}

#[test]
fn an_announced_block_with_more_work_triggers_sync() {
    let (key, _, mut chain) = setup(100);
    let mut servers = servers(&chain, 2);
    let mut client = Client::new(chain.clone(), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    chain.extend(&key, 5);
    servers = self::servers(&chain, 2);
    let (hash, height, work) = chain.tip();
    client
        .sched
        .on_announced(client.now, 2, hash, height, work, &client.chain);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.chain.tip(), chain.tip());
    assert_eq!(client.out.served_total(), 5);
}

#[test]
fn the_periodic_status_poll_finds_a_chain_nobody_announced() {
    let (key, _, mut chain) = setup(100);
    let mut servers = servers(&chain, 2);
    let mut client = Client::new(chain.clone(), SyncConfig::default());
    client.handshake(&servers);
    client.run(&mut servers, Until::Idle);
    let start = client.now;
    chain.extend(&key, 7);
    servers = self::servers(&chain, 2);
    client.run(&mut servers, Until::Time(start + STATUS_POLL_INTERVAL / 2));
    assert_eq!(client.chain.height(), 100, "nothing before the poll");
    client.run(
        &mut servers,
        Until::Time(start + STATUS_POLL_INTERVAL + Duration::from_secs(1)),
    );
    assert_eq!(client.chain.tip(), chain.tip());
}

// ---------------------------------------------------------------------------------------------
// Whole networks: every node runs a scheduler, a server and a partition detector.

struct NetNode {
    key: Keypair,
    chain: ChainHost,
    sched: SyncScheduler<u8>,
    server: SyncServer<u8>,
    detector: PartitionDetector<u8>,
    /// States the detector went through.
    states: Vec<NetworkState>,
}

enum Payload {
    Request(RequestId, Vec<u8>),
    Response(RequestId, Vec<u8>),
}

struct Msg {
    at: Instant,
    from: u8,
    to: u8,
    payload: Payload,
}

struct Net {
    now: Instant,
    nodes: Vec<NetNode>,
    links: BTreeSet<(u8, u8)>,
    inbox: Vec<Msg>,
    penalties: Vec<(u8, u8, Reason)>,
    disconnects: Vec<(u8, u8)>,
    slot: u64,
}

const HOP: Duration = Duration::from_millis(10);

fn link(a: u8, b: u8) -> (u8, u8) {
    (a.min(b), a.max(b))
}

impl Net {
    fn new(n: u8, detector: PartitionConfig) -> Net {
        let keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_secret(&[100 + i; 32]))
            .collect();
        let genesis = Genesis::devnet(
            "partnet",
            keys.iter().map(Keypair::public).collect(),
            TimestampMs(0),
        )
        .expect("genesis")
        .block();
        let validators: HashSet<PublicKey> = keys.iter().map(Keypair::public).collect();
        let now = Instant::now();
        let nodes = keys
            .into_iter()
            .map(|key| {
                let chain = ChainHost::new(&genesis, validators.clone());
                let mut detector = PartitionDetector::new(detector.clone(), now);
                detector.on_local_tip(now, chain.tip_info());
                NetNode {
                    key,
                    chain,
                    sched: SyncScheduler::new(SyncConfig::default()),
                    server: SyncServer::default(),
                    detector,
                    states: vec![NetworkState::Healthy],
                }
            })
            .collect();
        Net {
            now,
            nodes,
            links: BTreeSet::new(),
            inbox: Vec::new(),
            penalties: Vec::new(),
            disconnects: Vec::new(),
            slot: 0,
        }
    }

    fn connect(&mut self, a: u8, b: u8) {
        if !self.links.insert(link(a, b)) {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            let status = self.nodes[y as usize].chain.status();
            let now = self.now;
            let node = &mut self.nodes[x as usize];
            node.detector.on_peer_connected(now, y);
            let on_best = node.chain.on_best(&status.best_hash);
            node.detector.on_peer_tip(
                now,
                y,
                TipInfo {
                    hash: status.best_hash,
                    height: status.best_height,
                    work: status.cumulative_work,
                },
                on_best,
            );
            node.sched.add_peer(y);
            node.sched.on_status(now, y, status, &node.chain);
        }
    }

    fn disconnect(&mut self, a: u8, b: u8) {
        if !self.links.remove(&link(a, b)) {
            return;
        }
        self.inbox.retain(|m| link(m.from, m.to) != link(a, b));
        for (x, y) in [(a, b), (b, a)] {
            let now = self.now;
            let node = &mut self.nodes[x as usize];
            node.detector.on_peer_disconnected(now, &y);
            node.server.remove_peer(&y);
            node.sched.remove_peer(now, &y, &node.chain);
        }
    }

    fn peers(&self, x: u8) -> Vec<u8> {
        self.links
            .iter()
            .filter_map(|(a, b)| {
                if *a == x {
                    Some(*b)
                } else if *b == x {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Tells `x`'s peers about its tip (what the relay's block announcement does).
    fn announce(&mut self, x: u8) {
        let tip = self.nodes[x as usize].chain.tip_info();
        let now = self.now;
        self.nodes[x as usize].detector.on_local_tip(now, tip);
        for y in self.peers(x) {
            let node = &mut self.nodes[y as usize];
            let on_best = node.chain.on_best(&tip.hash);
            node.detector.on_peer_tip(now, x, tip, on_best);
            node.sched
                .on_announced(now, x, tip.hash, tip.height, tip.work, &node.chain);
        }
    }

    /// Carries out every node's sync actions.
    fn flush(&mut self) {
        for x in 0..self.nodes.len() as u8 {
            while let Some(action) = self.nodes[x as usize].sched.poll_action() {
                match action {
                    SyncAction::Request { peer, id, request } => {
                        if self.links.contains(&link(x, peer)) {
                            self.inbox.push(Msg {
                                at: self.now + HOP,
                                from: x,
                                to: peer,
                                payload: Payload::Request(id, codec::encode(&request)),
                            });
                        }
                    }
                    SyncAction::Penalize { peer, reason } => self.penalties.push((x, peer, reason)),
                    SyncAction::Disconnect { peer, .. } => {
                        self.disconnects.push((x, peer));
                        self.disconnect(x, peer);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let now = self.now;
        let (from, to) = (msg.from, msg.to);
        match msg.payload {
            Payload::Request(id, bytes) => {
                let request: SyncRequest = codec::decode(&bytes).expect("request codec");
                let node = &mut self.nodes[to as usize];
                if let SyncRequest::Status(s) = &request {
                    node.sched.on_status(now, from, s.clone(), &node.chain);
                }
                let resp = node.server.serve(now, from, request, &node.chain);
                self.inbox.push(Msg {
                    at: now + HOP,
                    from: to,
                    to: from,
                    payload: Payload::Response(id, codec::encode(&resp)),
                });
            }
            Payload::Response(id, bytes) => {
                let resp: SyncResponse = codec::decode(&bytes).expect("response codec");
                let node = &mut self.nodes[to as usize];
                let before = node.chain.tip_hash();
                node.sched.on_response(now, from, id, resp, &node.chain);
                for (block, peer) in node.sched.take_ready(now, &node.chain) {
                    if !node.chain.import(block) {
                        node.sched.on_invalid_block(now, peer, &node.chain);
                        break;
                    }
                }
                if node.chain.tip_hash() != before {
                    self.announce(to);
                }
            }
        }
    }

    /// The next slot's validator extends its best chain.
    fn produce(&mut self) {
        self.slot += 1;
        let x = (self.slot % self.nodes.len() as u64) as u8;
        let node = &mut self.nodes[x as usize];
        let parent = node.chain.tip_header();
        let block = Block::build(
            &node.key,
            parent.hash(),
            Height(parent.height.0 + 1),
            TimestampMs(self.slot * 1_000),
            vec![],
        );
        assert!(node.chain.import(block));
        self.announce(x);
    }

    /// Runs `slots` one-second slots: production, messages, timers, detectors.
    fn run_slots(&mut self, slots: u64) {
        for _ in 0..slots {
            let slot_end = self.now + Duration::from_secs(1);
            self.produce();
            loop {
                self.flush();
                self.inbox.sort_by_key(|m| m.at);
                let next_msg = self.inbox.first().map(|m| m.at);
                let next_timer = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.sched.poll_timeout())
                    .min();
                let next = [next_msg, next_timer].into_iter().flatten().min();
                let Some(next) = next.filter(|t| *t < slot_end) else {
                    break;
                };
                self.now = self.now.max(next);
                if next_msg == Some(next) {
                    let msg = self.inbox.remove(0);
                    self.deliver(msg);
                } else {
                    let now = self.now;
                    for node in &mut self.nodes {
                        if node.sched.poll_timeout().is_some_and(|t| t <= now) {
                            node.sched.handle_timeout(now, &node.chain);
                        }
                    }
                }
            }
            self.now = slot_end;
            let now = self.now;
            for node in &mut self.nodes {
                let state = node.sched.progress(now, &node.chain).state;
                let syncing = matches!(state, SyncState::Headers | SyncState::Blocks);
                node.detector.set_syncing(now, syncing);
                while node.detector.poll_action(now).is_some() {}
                while let Some(PartitionEvent::StateChanged { to, .. }) = node.detector.poll_event()
                {
                    node.states.push(to);
                }
            }
        }
    }
}

/// Ten validators produce in turn; the network splits 6/4 for 60 slots and heals. The smaller
/// side's detectors show the partition; after the heal every node converges on the heavier
/// side's branch, all detectors are healthy again, and nobody is penalised for valid blocks.
#[test]
fn a_6_4_partition_heals_onto_the_heavier_branch() {
    let config = PartitionConfig {
        min_peers: 5,
        // The larger side's longest gap between its own slots is 5 s, the smaller side's 7 s.
        stale_tip_slots: 6,
        ..PartitionConfig::default()
    };
    let mut net = Net::new(10, config);
    for a in 0..10 {
        for b in a + 1..10 {
            net.connect(a, b);
        }
    }
    net.run_slots(20);
    let tip = net.nodes[0].chain.tip();
    assert!(net.nodes.iter().all(|n| n.chain.tip() == tip), "converged");
    assert_eq!(tip.1, Height(20));
    // Split: nodes 0..6 and 6..10.
    let big: Vec<u8> = (0..6).collect();
    let small: Vec<u8> = (6..10).collect();
    for a in &big {
        for b in &small {
            net.disconnect(*a, *b);
        }
    }
    net.run_slots(60);
    let big_tip = net.nodes[0].chain.tip();
    let small_tip = net.nodes[6].chain.tip();
    assert!(
        big.iter()
            .all(|x| net.nodes[*x as usize].chain.tip() == big_tip)
    );
    assert!(
        small
            .iter()
            .all(|x| net.nodes[*x as usize].chain.tip() == small_tip)
    );
    assert!(
        big_tip.2 > small_tip.2,
        "six producers out of ten do more work"
    );
    for x in &small {
        let state = net.nodes[*x as usize].detector.state();
        assert!(
            matches!(state, NetworkState::Partitioned | NetworkState::Degraded),
            "node {x}: {state}"
        );
    }
    for x in &big {
        assert_eq!(
            net.nodes[*x as usize].detector.state(),
            NetworkState::Healthy
        );
    }
    // Heal.
    for a in &big {
        for b in &small {
            net.connect(*a, *b);
        }
    }
    net.run_slots(40);
    let tip = net.nodes[0].chain.tip();
    for (i, n) in net.nodes.iter().enumerate() {
        assert_eq!(n.chain.tip(), tip, "node {i}");
        assert!(
            n.chain.on_best(&big_tip.0),
            "node {i} is on the heavier branch"
        );
        assert!(!n.chain.on_best(&small_tip.0));
        assert_eq!(n.detector.state(), NetworkState::Healthy, "node {i}");
    }
    for (i, n) in net.nodes.iter().enumerate() {
        // No flapping: worse and worse while split, then better and better.
        let states = &n.states;
        let worst = states.iter().position(|s| Some(s) == states.iter().max());
        let worst = worst.expect("at least one state");
        assert!(states[..=worst].is_sorted(), "node {i}: {states:?}");
        assert!(
            states[worst..].is_sorted_by(|a, b| a >= b),
            "node {i}: {states:?}"
        );
        assert_eq!(states.last(), Some(&NetworkState::Healthy));
    }
    assert!(net.penalties.is_empty(), "{:?}", net.penalties);
    assert!(net.disconnects.is_empty(), "{:?}", net.disconnects);
}

/// A late joiner connects to a five-node network that holds 5,000 blocks and keeps producing.
#[test]
fn a_late_joiner_catches_up_with_a_live_network() {
    let (_, genesis, chain) = setup(5_000);
    let mut servers = servers(&chain, 5);
    let mut client = Client::new(empty(&genesis), SyncConfig::default());
    client.handshake(&servers);
    // Half-way, the network moves on by 20 blocks and one node announces it.
    client.run(&mut servers, Until::Height(2_500));
    let (key, _) = keys();
    let mut longer = chain.clone();
    longer.extend(&key, 20);
    for s in servers.values_mut() {
        s.chain = longer.clone();
    }
    let (hash, height, work) = longer.tip();
    client
        .sched
        .on_announced(client.now, 3, hash, height, work, &client.chain);
    client.run(&mut servers, Until::Idle);
    assert_eq!(client.chain.tip(), longer.tip());
    assert_eq!(client.out.served_total(), 5_020);
    assert!(client.out.penalties.is_empty());
}
