//! Partition detection and recovery: a deterministic state machine, time passed in.
//!
//! It computes an explicit [`NetworkState`] from what the adapter tells it, and polls out
//! recovery actions for the adapter to carry out:
//!
//! ```text
//!  connected / disconnected ─┐
//!  our tip, peers' tips ─────┤   signals (each must persist)      raw state      hysteresis
//!  bootstrap reachable ──────┼─► low peers · stale tip ·      ──► healthy /  ──► worse: at once
//!  producers expected ───────┘   diverging tips · no bootstrap     degraded /     better: after
//!                                                                  partitioned    heal_hold
//!  poll_action(now) ──► RedialAddressBook · RedialBootstrap · DhtRandomWalk (while not healthy)
//!                       AddExtraOutboundPeer (stale tip) · RemoveExtraOutboundPeer (healed)
//!  poll_event() ──────► StateChanged { from, to, report }  (log it, expose it)
//! ```
//!
//! Signals:
//! - **low peers**: fewer than `min_peers` connected for `low_peers_grace`; none at all for that
//!   long is isolation (partitioned on its own);
//! - **stale tip**: no new best block for `stale_tip_slots` slots while producers are expected;
//! - **diverging tips**: a peer whose tip is not on our chain, at a similar height or with much
//!   more work, for `divergence_hold` (a block race resolves well within it); the fraction of
//!   peers with tips that diverge decides. While sync is catching up, tips with more work are
//!   what it is fetching and do not count;
//! - **bootstrap unreachable**: the adapter could reach none of the bootstrap nodes.
//!
//! One signal makes the state `degraded`; two, half the peers diverging, or isolation make it
//! `partitioned`. A worse state is taken at once (the signals have their own persistence); a
//! better one only once the raw state has been at least that good for `heal_hold` without a
//! break, so the state does not flap.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use playergold_primitives::{BlockHash, Height, Work};
use serde::{Deserialize, Serialize};

use crate::relay::PeerKey;

/// Default `min_peers`: the net layer's default outbound target (Bitcoin Core's eight full-relay
/// outbound peers).
pub const DEFAULT_MIN_PEERS: usize = 8;
/// How long the peer count must stay below `min_peers` before it counts: reconnecting after a
/// restart or a lost link takes a few seconds.
pub const LOW_PEERS_GRACE: Duration = Duration::from_secs(30);
/// Slots without a new best block before the tip is stale: ten 1-second devnet slots is several
/// validators in a row missing theirs, not one missed slot.
pub const STALE_TIP_SLOTS: u32 = 10;
/// Heights this close to ours count as "similar" when comparing a peer's tip with ours.
pub const SIMILAR_HEIGHT: u64 = 2;
/// Work ahead of ours that makes a peer's tip diverge whatever its height. At one unit of
/// proof-of-authority work per block this continues `SIMILAR_HEIGHT` without a gap: a tip not
/// on our chain diverges if it is near our height or further ahead. Lag is what
/// `DIVERGENCE_HOLD` and the sync mask (`set_syncing`) are for.
pub const MUCH_MORE_WORK: Work = Work(2);
/// How long a peer's tip must diverge before it counts: a block race settles within a slot or
/// two, a sync of a few thousand blocks within seconds.
pub const DIVERGENCE_HOLD: Duration = Duration::from_secs(10);
/// Percent of peers with diverging tips that makes the network degraded.
pub const DIVERGED_DEGRADED_PCT: u32 = 25;
/// Percent of peers with diverging tips that makes it partitioned.
pub const DIVERGED_PARTITIONED_PCT: u32 = 50;
/// How long a better state must hold before we move to it.
pub const HEAL_HOLD: Duration = Duration::from_secs(20);
/// Least time between two redials of the address book (while below `min_peers` or not
/// healthy). A redial dials past the backoffs of peers we were connected to, so this bounds how
/// long after a split heals the sides find each other again; each one is at most the net
/// layer's eight concurrent dials to peers we know, so every 10 s costs little.
pub const REDIAL_ADDRESS_BOOK_INTERVAL: Duration = Duration::from_secs(10);
/// Least time between two redials of the bootstrap nodes: they serve every node, so they are
/// asked less often than the address book.
pub const REDIAL_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(60);
/// Least time between two DHT random walks.
pub const DHT_RANDOM_WALK_INTERVAL: Duration = Duration::from_secs(30);
/// How often the stale-tip check may add an extra outbound peer (Bitcoin Core checks every 45 s).
pub const STALE_TIP_CHECK_INTERVAL: Duration = Duration::from_secs(45);
/// How long an extra outbound peer gets to bring a fresh tip before it is replaced by another.
pub const EXTRA_PEER_ROTATE_INTERVAL: Duration = Duration::from_secs(300);
/// How often the adapter calls `poll_action` when nothing else happens.
pub const EVAL_INTERVAL: Duration = Duration::from_secs(1);
/// Most peers tracked: far above any connection limit; beyond it new peers are not tracked.
pub const MAX_TRACKED_PEERS: usize = 1_024;
/// Most undelivered events kept (the adapter drains them after each call).
pub const MAX_EVENTS: usize = 16;

/// The network as this node sees it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NetworkState {
    /// Enough peers, a live tip, peers agree with us.
    #[default]
    Healthy,
    /// One warning sign.
    Degraded,
    /// Cut off from (part of) the network.
    Partitioned,
}

impl NetworkState {
    /// The name shown in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkState::Healthy => "healthy",
            NetworkState::Degraded => "degraded",
            NetworkState::Partitioned => "partitioned",
        }
    }
}

impl fmt::Display for NetworkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionConfig {
    /// Fewer connected peers than this is a warning sign.
    pub min_peers: usize,
    /// How long the count must stay low before it counts.
    pub low_peers_grace: Duration,
    /// The chain's slot duration.
    pub slot: Duration,
    /// Slots without a new best block before the tip is stale.
    pub stale_tip_slots: u32,
    /// Heights this close count as similar.
    pub similar_height: u64,
    /// Work ahead of ours that diverges whatever the height.
    pub much_more_work: Work,
    /// How long a tip must diverge before it counts.
    pub divergence_hold: Duration,
    /// Percent of diverging peers for `Degraded`.
    pub diverged_degraded_pct: u32,
    /// Percent of diverging peers for `Partitioned`.
    pub diverged_partitioned_pct: u32,
    /// How long a better state must hold before we move to it.
    pub heal_hold: Duration,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            min_peers: DEFAULT_MIN_PEERS,
            low_peers_grace: LOW_PEERS_GRACE,
            slot: Duration::from_secs(1),
            stale_tip_slots: STALE_TIP_SLOTS,
            similar_height: SIMILAR_HEIGHT,
            much_more_work: MUCH_MORE_WORK,
            divergence_hold: DIVERGENCE_HOLD,
            diverged_degraded_pct: DIVERGED_DEGRADED_PCT,
            diverged_partitioned_pct: DIVERGED_PARTITIONED_PCT,
            heal_hold: HEAL_HOLD,
        }
    }
}

/// A chain tip, ours or a peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TipInfo {
    /// Best block hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: Height,
    /// Its cumulative work.
    pub work: Work,
}

/// What the adapter must do to reconnect with the rest of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryAction {
    /// Dial addresses from the address book up to the outbound target.
    RedialAddressBook,
    /// Dial the bootstrap nodes.
    RedialBootstrap,
    /// Run a DHT random walk to find peers we do not know.
    DhtRandomWalk,
    /// Open one outbound connection beyond the target (the tip is stale).
    AddExtraOutboundPeer,
    /// Close the extra outbound connection (the tip is fresh again).
    RemoveExtraOutboundPeer,
}

/// The signals behind the state, for the API, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NetworkReport {
    /// The state.
    pub state: NetworkState,
    /// Connected peers.
    pub peers: usize,
    /// Peer count has been below `min_peers` for the grace period.
    pub low_peers: bool,
    /// No new best block for the configured slots while producers are expected.
    pub stale_tip: bool,
    /// Milliseconds since our best block last changed.
    pub ms_since_new_block: u64,
    /// Peers whose tips diverge from ours (for at least the hold time).
    pub diverging_peers: usize,
    /// None of the bootstrap nodes is reachable.
    pub bootstrap_unreachable: bool,
    /// An extra outbound peer is open for the stale-tip check.
    pub extra_outbound: bool,
}

/// What happened, for the adapter to log and expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionEvent {
    /// The network state changed.
    StateChanged {
        /// Before.
        from: NetworkState,
        /// After.
        to: NetworkState,
        /// The signals at the change.
        report: NetworkReport,
    },
}

#[derive(Debug, Default)]
struct PeerInfo {
    tip: Option<TipInfo>,
    diverging_since: Option<Instant>,
}

/// The partition detector.
#[derive(Debug)]
pub struct PartitionDetector<P: PeerKey> {
    config: PartitionConfig,
    state: NetworkState,
    peers: BTreeMap<P, PeerInfo>,
    low_since: Option<Instant>,
    ours: Option<TipInfo>,
    last_block_at: Instant,
    producers_expected: bool,
    syncing: bool,
    bootstrap_unreachable: bool,
    /// Since when the raw state has been healthy without a break.
    healthy_since: Option<Instant>,
    /// Since when the raw state has been healthy or degraded without a break.
    degraded_since: Option<Instant>,
    last_eval: Instant,
    extra_since: Option<Instant>,
    last_redial_book: Option<Instant>,
    last_redial_bootstrap: Option<Instant>,
    last_walk: Option<Instant>,
    last_extra_check: Option<Instant>,
    actions: VecDeque<RecoveryAction>,
    events: VecDeque<PartitionEvent>,
}

impl<P: PeerKey> PartitionDetector<P> {
    /// A detector started at `now`, healthy until the signals say otherwise, with producers
    /// expected.
    pub fn new(config: PartitionConfig, now: Instant) -> Self {
        let low = (config.min_peers > 0).then_some(now);
        PartitionDetector {
            config,
            state: NetworkState::Healthy,
            peers: BTreeMap::new(),
            low_since: low,
            ours: None,
            last_block_at: now,
            producers_expected: true,
            syncing: false,
            bootstrap_unreachable: false,
            healthy_since: None,
            degraded_since: None,
            last_eval: now,
            extra_since: None,
            last_redial_book: None,
            last_redial_bootstrap: None,
            last_walk: None,
            last_extra_check: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> NetworkState {
        self.state
    }

    /// A peer connected.
    pub fn on_peer_connected(&mut self, now: Instant, peer: P) {
        if self.peers.len() < MAX_TRACKED_PEERS {
            self.peers.entry(peer).or_default();
        }
        self.update_low(now);
    }

    /// A peer disconnected.
    pub fn on_peer_disconnected(&mut self, now: Instant, peer: &P) {
        self.peers.remove(peer);
        self.update_low(now);
    }

    /// A peer's best tip (its status, or a block it announced), and whether that block is on
    /// our best chain (a peer that is only behind us does not diverge).
    pub fn on_peer_tip(&mut self, now: Instant, peer: P, tip: TipInfo, on_our_chain: bool) {
        if !self.peers.contains_key(&peer) {
            self.on_peer_connected(now, peer);
        }
        if let Some(info) = self.peers.get_mut(&peer) {
            info.tip = (!on_our_chain).then_some(tip);
            Self::refresh(&self.config, self.ours, self.syncing, info, now);
        }
    }

    /// Our best tip changed (or was read at start-up).
    pub fn on_local_tip(&mut self, now: Instant, tip: TipInfo) {
        if self.ours.map(|t| t.hash) != Some(tip.hash) {
            if self.ours.is_some() {
                self.last_block_at = now;
            }
            self.ours = Some(tip);
            for info in self.peers.values_mut() {
                // A peer whose tip we just adopted no longer diverges.
                if info.tip.is_some_and(|t| t.hash == tip.hash) {
                    info.tip = None;
                }
                Self::refresh(&self.config, Some(tip), self.syncing, info, now);
            }
        }
    }

    /// Whether blocks are expected at all (validators online per the chain's schedule). A stale
    /// tip only counts while they are.
    pub fn set_producers_expected(&mut self, now: Instant, expected: bool) {
        if expected && !self.producers_expected {
            // The clock of staleness starts now, not at the last block before the pause.
            self.last_block_at = now;
        }
        self.producers_expected = expected;
    }

    /// Whether sync is catching up (its state is `headers` or `blocks`): peers ahead of us are
    /// then what it is fetching, not a divergence.
    pub fn set_syncing(&mut self, now: Instant, syncing: bool) {
        if self.syncing == syncing {
            return;
        }
        self.syncing = syncing;
        for info in self.peers.values_mut() {
            Self::refresh(&self.config, self.ours, syncing, info, now);
        }
    }

    /// Whether at least one bootstrap node is reachable (connected, or answered its last dial).
    /// A node without bootstrap nodes never calls it.
    pub fn set_bootstrap_reachable(&mut self, reachable: bool) {
        self.bootstrap_unreachable = !reachable;
    }

    /// When `poll_action` should next be called if nothing else happens.
    pub fn poll_timeout(&self) -> Instant {
        self.last_eval + EVAL_INTERVAL
    }

    /// The next event (state changes).
    pub fn poll_event(&mut self) -> Option<PartitionEvent> {
        self.events.pop_front()
    }

    /// Re-evaluates the state at `now` and returns the next recovery action due, if any. Call
    /// it until it returns `None`.
    pub fn poll_action(&mut self, now: Instant) -> Option<RecoveryAction> {
        if self.actions.is_empty() {
            self.evaluate(now);
        }
        self.actions.pop_front()
    }

    /// The signals and state at `now`.
    pub fn report(&self, now: Instant) -> NetworkReport {
        let low_peers = self
            .low_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.config.low_peers_grace);
        let since_block = now.saturating_duration_since(self.last_block_at);
        let stale = self.config.slot * self.config.stale_tip_slots.max(1);
        let diverging_peers = self
            .peers
            .values()
            .filter(|p| {
                p.diverging_since.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.config.divergence_hold
                })
            })
            .count();
        NetworkReport {
            state: self.state,
            peers: self.peers.len(),
            low_peers,
            stale_tip: self.producers_expected && since_block >= stale,
            ms_since_new_block: since_block.as_millis().min(u64::MAX as u128) as u64,
            diverging_peers,
            bootstrap_unreachable: self.bootstrap_unreachable,
            extra_outbound: self.extra_since.is_some(),
        }
    }

    fn update_low(&mut self, now: Instant) {
        if self.peers.len() < self.config.min_peers {
            self.low_since.get_or_insert(now);
        } else {
            self.low_since = None;
        }
    }

    /// Whether `tip` (not on our chain) diverges from `ours`.
    fn diverges(
        config: &PartitionConfig,
        ours: Option<TipInfo>,
        syncing: bool,
        tip: &TipInfo,
    ) -> bool {
        let Some(ours) = ours else {
            return false;
        };
        tip.hash != ours.hash
            && (tip.height.0.abs_diff(ours.height.0) <= config.similar_height
                || (!syncing && tip.work > ours.work.saturating_add(config.much_more_work)))
    }

    fn refresh(
        config: &PartitionConfig,
        ours: Option<TipInfo>,
        syncing: bool,
        info: &mut PeerInfo,
        now: Instant,
    ) {
        if info
            .tip
            .as_ref()
            .is_some_and(|t| Self::diverges(config, ours, syncing, t))
        {
            info.diverging_since.get_or_insert(now);
        } else {
            info.diverging_since = None;
        }
    }

    fn raw_state(&self, report: &NetworkReport) -> NetworkState {
        let isolated = report.peers == 0 && report.low_peers;
        let known = self.peers.len().max(1) as u32;
        let pct = report.diverging_peers as u32 * 100 / known;
        let diverged = report.diverging_peers > 0 && pct >= self.config.diverged_degraded_pct;
        let signals = [
            report.low_peers,
            report.stale_tip,
            diverged,
            report.bootstrap_unreachable,
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if isolated
            || signals >= 2
            || (report.diverging_peers > 0 && pct >= self.config.diverged_partitioned_pct)
        {
            NetworkState::Partitioned
        } else if signals == 1 {
            NetworkState::Degraded
        } else {
            NetworkState::Healthy
        }
    }

    fn evaluate(&mut self, now: Instant) {
        self.last_eval = now;
        let report = self.report(now);
        let raw = self.raw_state(&report);
        let from = self.state;
        // Since when the raw state has been at most healthy / at most degraded without a break.
        self.healthy_since = match raw {
            NetworkState::Healthy => Some(self.healthy_since.unwrap_or(now)),
            _ => None,
        };
        self.degraded_since = match raw {
            NetworkState::Healthy | NetworkState::Degraded => {
                Some(self.degraded_since.unwrap_or(now))
            }
            NetworkState::Partitioned => None,
        };
        let held = |since: Option<Instant>| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= self.config.heal_hold)
        };
        if raw > from {
            self.state = raw;
        } else if from > NetworkState::Healthy && held(self.healthy_since) {
            self.state = NetworkState::Healthy;
        } else if from > NetworkState::Degraded && held(self.degraded_since) {
            // A signal that comes and goes within the hold (a recurring stale tip) keeps us
            // degraded rather than letting us bounce through healthy.
            self.state = NetworkState::Degraded;
        }
        if self.state != from {
            if self.events.len() >= MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(PartitionEvent::StateChanged {
                from,
                to: self.state,
                report: NetworkReport {
                    state: self.state,
                    ..report
                },
            });
        }
        self.plan(now, &report);
    }

    /// Queues the recovery actions that are due, each at most once per its interval.
    fn plan(&mut self, now: Instant, report: &NetworkReport) {
        let unhealthy = self.state != NetworkState::Healthy;
        let due = |last: Option<Instant>, every: Duration| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        if (unhealthy || report.peers < self.config.min_peers)
            && due(self.last_redial_book, REDIAL_ADDRESS_BOOK_INTERVAL)
        {
            self.last_redial_book = Some(now);
            self.actions.push_back(RecoveryAction::RedialAddressBook);
        }
        if unhealthy && due(self.last_redial_bootstrap, REDIAL_BOOTSTRAP_INTERVAL) {
            self.last_redial_bootstrap = Some(now);
            self.actions.push_back(RecoveryAction::RedialBootstrap);
        }
        if unhealthy && due(self.last_walk, DHT_RANDOM_WALK_INTERVAL) {
            self.last_walk = Some(now);
            self.actions.push_back(RecoveryAction::DhtRandomWalk);
        }
        // Bitcoin's stale-tip check: one extra outbound peer while the tip is stale, replaced if
        // it brings nothing, closed once the tip is fresh and the network healthy.
        match self.extra_since {
            None if report.stale_tip && due(self.last_extra_check, STALE_TIP_CHECK_INTERVAL) => {
                self.last_extra_check = Some(now);
                self.extra_since = Some(now);
                self.actions.push_back(RecoveryAction::AddExtraOutboundPeer);
            }
            Some(since)
                if report.stale_tip
                    && now.saturating_duration_since(since) >= EXTRA_PEER_ROTATE_INTERVAL =>
            {
                self.last_extra_check = Some(now);
                self.extra_since = Some(now);
                self.actions
                    .push_back(RecoveryAction::RemoveExtraOutboundPeer);
                self.actions.push_back(RecoveryAction::AddExtraOutboundPeer);
            }
            Some(_) if !report.stale_tip && !unhealthy => {
                self.extra_since = None;
                self.actions
                    .push_back(RecoveryAction::RemoveExtraOutboundPeer);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A tip on branch `n` at `height`.
    fn tip(n: u8, height: u64) -> TipInfo {
        let mut hash = [n; 32];
        hash[..8].copy_from_slice(&height.to_le_bytes());
        TipInfo {
            hash: BlockHash(hash),
            height: Height(height),
            work: Work(height.into()),
        }
    }

    /// A detector with `peers` connected, our tip at height 10, all quiet.
    fn detector(peers: u8, start: Instant) -> PartitionDetector<u8> {
        let config = PartitionConfig {
            min_peers: 4,
            ..PartitionConfig::default()
        };
        let mut d = PartitionDetector::new(config, start);
        d.on_local_tip(start, tip(0, 10));
        for p in 0..peers {
            d.on_peer_connected(start, p);
        }
        d
    }

    fn drain(d: &mut PartitionDetector<u8>, now: Instant) -> Vec<RecoveryAction> {
        std::iter::from_fn(|| d.poll_action(now)).collect()
    }

    /// Advances second by second, producing a block each second, and returns the last state.
    fn run_live(d: &mut PartitionDetector<u8>, from: Instant, secs: u64, height: &mut u64) {
        for s in 1..=secs {
            let now = from + S * s as u32;
            *height += 1;
            d.on_local_tip(now, tip((*height % 250) as u8 + 1, *height));
            drain(d, now);
        }
    }

    #[test]
    fn names_are_lowercase_in_display_and_serde() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};
        for (s, name) in [
            (NetworkState::Healthy, "healthy"),
            (NetworkState::Degraded, "degraded"),
            (NetworkState::Partitioned, "partitioned"),
        ] {
            assert_eq!(s.to_string(), name);
            // `rename_all` names the variants the same way in both directions.
            let de: StrDeserializer<'_, Error> = name.into_deserializer();
            assert_eq!(NetworkState::deserialize(de), Ok(s));
        }
        let de: StrDeserializer<'_, Error> = "Healthy".into_deserializer();
        assert!(NetworkState::deserialize(de).is_err());
    }

    #[test]
    fn a_live_well_connected_node_stays_healthy() {
        let start = Instant::now();
        let mut d = detector(8, start);
        let mut h = 10;
        run_live(&mut d, start, 120, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn a_single_missed_slot_does_not_flap() {
        let start = Instant::now();
        let mut d = detector(8, start);
        let mut h = 10;
        run_live(&mut d, start, 20, &mut h);
        // Two slots without a block, then blocks again.
        let t = start + S * 23;
        drain(&mut d, t);
        run_live(&mut d, t, 20, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
        assert_eq!(d.poll_event(), None);
    }

    #[test]
    fn few_peers_for_a_while_degrade_and_recovery_waits_for_the_hold() {
        let start = Instant::now();
        let mut d = detector(2, start);
        let mut h = 10;
        run_live(&mut d, start, 29, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy, "still within the grace");
        run_live(&mut d, start + S * 29, 2, &mut h);
        assert_eq!(d.state(), NetworkState::Degraded);
        assert!(matches!(
            d.poll_event(),
            Some(PartitionEvent::StateChanged {
                from: NetworkState::Healthy,
                to: NetworkState::Degraded,
                report: NetworkReport {
                    low_peers: true,
                    ..
                },
            })
        ));
        // Peers come back: healthy only after HEAL_HOLD.
        let t = start + S * 31;
        for p in 2..6 {
            d.on_peer_connected(t, p);
        }
        run_live(&mut d, t, 19, &mut h);
        assert_eq!(d.state(), NetworkState::Degraded);
        run_live(&mut d, t + S * 19, 2, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
    }

    #[test]
    fn no_peers_at_all_is_partitioned() {
        let start = Instant::now();
        let mut d = detector(0, start);
        let mut h = 10;
        run_live(&mut d, start, 31, &mut h);
        assert_eq!(d.state(), NetworkState::Partitioned);
    }

    #[test]
    fn a_stale_tip_adds_one_extra_peer_and_removes_it_once_fresh() {
        let start = Instant::now();
        let mut d = detector(8, start);
        let mut actions = Vec::new();
        for s in 1..=60 {
            actions.extend(drain(&mut d, start + S * s));
        }
        assert_eq!(d.state(), NetworkState::Degraded);
        let adds = actions
            .iter()
            .filter(|a| **a == RecoveryAction::AddExtraOutboundPeer)
            .count();
        assert_eq!(adds, 1, "{actions:?}");
        // Rate-limited: one redial and one walk per interval, not one per second.
        let walks = actions
            .iter()
            .filter(|a| **a == RecoveryAction::DhtRandomWalk)
            .count();
        assert_eq!(walks, 2, "{actions:?}");
        // Blocks again: the extra peer goes once the state is healthy again.
        let mut h = 10;
        let t = start + S * 60;
        let mut later = Vec::new();
        for s in 1..=30 {
            h += 1;
            d.on_local_tip(t + S * s, tip(h as u8, h));
            later.extend(drain(&mut d, t + S * s));
        }
        assert_eq!(d.state(), NetworkState::Healthy);
        assert_eq!(
            later
                .iter()
                .filter(|a| **a == RecoveryAction::RemoveExtraOutboundPeer)
                .count(),
            1,
            "{later:?}"
        );
        assert!(!later.contains(&RecoveryAction::AddExtraOutboundPeer));
    }

    #[test]
    fn a_stale_tip_is_no_signal_while_no_producer_is_expected() {
        let start = Instant::now();
        let mut d = detector(8, start);
        d.set_producers_expected(start, false);
        for s in 1..=60 {
            assert_eq!(drain(&mut d, start + S * s), vec![]);
        }
        assert_eq!(d.state(), NetworkState::Healthy);
    }

    #[test]
    fn diverging_tips_count_only_after_the_hold() {
        let start = Instant::now();
        let mut d = detector(4, start);
        // Two of four peers show another block at our height: a race, at first.
        d.on_peer_tip(start, 0, tip(99, 10), false);
        d.on_peer_tip(start, 1, tip(98, 11), false);
        // A peer behind us on our chain never diverges.
        d.on_peer_tip(start, 2, tip(5, 8), true);
        drain(&mut d, start + S * 9);
        assert_eq!(d.state(), NetworkState::Healthy);
        d.on_local_tip(start + S * 9, tip(1, 11));
        drain(&mut d, start + S * 10);
        assert_eq!(
            d.state(),
            NetworkState::Partitioned,
            "half the peers diverge"
        );
        assert_eq!(d.report(start + S * 10).diverging_peers, 2);
        // We adopt peer 1's tip and peer 0 follows us: healthy after the hold.
        d.on_local_tip(start + S * 11, tip(98, 11));
        d.on_peer_tip(start + S * 11, 0, tip(98, 11), true);
        let mut h = 11;
        run_live(&mut d, start + S * 11, 20, &mut h);
        assert_eq!(d.state(), NetworkState::Partitioned, "heal hold not over");
        run_live(&mut d, start + S * 31, 1, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
    }

    #[test]
    fn peers_ahead_do_not_diverge_while_sync_catches_up() {
        let start = Instant::now();
        let mut d = detector(4, start);
        d.set_syncing(start, true);
        for p in 0..4 {
            d.on_peer_tip(start, p, tip(50, 5_000), false);
        }
        let mut h = 10;
        run_live(&mut d, start, 30, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
        // Sync stops while they are still far ahead: now they count, after the hold.
        d.set_syncing(start + S * 30, false);
        run_live(&mut d, start + S * 30, 9, &mut h);
        assert_eq!(d.state(), NetworkState::Healthy);
        run_live(&mut d, start + S * 39, 1, &mut h);
        assert_eq!(d.state(), NetworkState::Partitioned);
    }

    #[test]
    fn bootstrap_unreachable_alone_degrades_and_with_few_peers_partitions() {
        let start = Instant::now();
        let mut d = detector(8, start);
        d.set_bootstrap_reachable(false);
        let mut h = 10;
        run_live(&mut d, start, 2, &mut h);
        assert_eq!(d.state(), NetworkState::Degraded);
        for p in 0..6 {
            d.on_peer_disconnected(start + S * 2, &p);
        }
        run_live(&mut d, start + S * 2, 31, &mut h);
        assert_eq!(d.state(), NetworkState::Partitioned);
    }
}
