//! Peer reputation: one bounded, decaying score per peer, a reason log, and bans.
//!
//! A deterministic struct: every call takes the current wall-clock time in milliseconds, so the
//! same sequence of reports gives the same scores, disconnects and bans (the table test below).
//! A peer's score is the sum of two parts, each decaying exponentially toward 0:
//!
//! - the **conduct** part: proven misbehaviour (invalid data, protocol violations) and merits
//!   (useful deliveries, answers), in [`MIN_SCORE`, `MAX_SCORE`], with a half-life of minutes;
//! - the **slowness** part: timeouts, stalls, unrequested or duplicate items, requests over a
//!   rate ([`Severity::Low`]). It never goes below `ReputationConfig::slowness_floor` and halves
//!   within a minute: a busy honest peer is the normal case, not an attack.
//!
//! ```text
//!  report(reason) ─► Low?  ─► slowness = max(slowness + δ, floor)   (can only disconnect)
//!                   └► else ─► conduct  = clamp(conduct + δ)         (can ban)
//!  score = conduct + slowness ≤ disconnect_below ─► Disconnect (it may come back)
//!  Fatal, or conduct ≤ ban_below                 ─► Ban (once; doubled on each repeat)
//! ```
//!
//! Invariant: slowness alone never bans, whatever the rate of reports, because bans look at the
//! conduct part only; a peer that stays useless is disconnected and may reconnect. Bans carry
//! wall-clock expiry so they persist across restarts ([`Reputation::bans`] /
//! [`Reputation::restore_bans`]). A ban is reported once ([`Action::Ban`]); later reports about a
//! banned peer (messages racing its disconnect) ask for nothing more.
//!
//! Local-fault guard: while [`Reputation::set_local_overload`] is on (the node turns it on when
//! its event loop runs late, see [`crate::overload`]), slowness reports are ignored: we never
//! blame a peer for our own failure.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;

use playergold_primitives::TimestampMs;

use crate::relay::{Offence, PeerKey};

/// Lowest score.
pub const MIN_SCORE: f64 = -100.0;
/// Highest score.
pub const MAX_SCORE: f64 = 100.0;
/// Reasons remembered per peer, for the API. 16 covers a misbehaving peer's story.
pub const REASON_LOG_LEN: usize = 16;
/// Peers tracked at once; beyond it the least recently updated (non-banned) entry goes.
pub const MAX_TRACKED_PEERS: usize = 4_096;
/// Bans remembered, active or expired (expired ones keep the repeat count). A fresh PeerId costs
/// an attacker nothing, so without a bound every banned identity would grow this table and the
/// persisted ban list for ever. 16,384 bans of ~60 bytes is about 1 MiB; beyond it the ban that
/// ends first (an expired one, if any) is forgotten.
pub const MAX_BANS: usize = 16_384;
/// Banned IPs remembered; beyond it the IP ban that ends first is forgotten. An attacker with
/// many addresses (an IPv6 prefix) cannot grow the table past this.
pub const MAX_IP_BANS: usize = 4_096;

/// How bad (or good) an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// Proof of malice or a broken peer: ban at once.
    Fatal,
    /// Almost certainly malicious (headers that fail validation, a wrong AI solution).
    High,
    /// Wrong but possibly honest (a body relayed in good faith, a malformed reply).
    Medium,
    /// Usually honest trouble (timeouts, stalls, duplicates, unrequested items, requests over
    /// a rate): moves only the slowness part of the score, which can never ban.
    Low,
    /// Useful work: first delivery of a valid item.
    UsefulDelivery,
    /// Useful work: a request answered.
    Answered,
}

impl Severity {
    /// The score change.
    pub fn delta(self) -> f64 {
        match self {
            Severity::Fatal => MIN_SCORE * 2.0,
            Severity::High => -25.0,
            Severity::Medium => -10.0,
            Severity::Low => -2.0,
            Severity::UsefulDelivery => 1.0,
            Severity::Answered => 0.25,
        }
    }
}

/// A reason for a score change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A relay-engine offence.
    Relay(Offence),
    /// A block with an invalid signature or producer.
    InvalidBlock,
    /// The peer's genesis differs after the handshake agreed.
    WrongGenesis,
    /// A frame that does not decode or exceeds its limit.
    MalformedFrame,
    /// Too many requests per second.
    RateLimited,
    /// Sync: a peer withheld data it claimed to have.
    Stalled,
    /// Sync: headers that failed validation.
    InvalidHeaders,
    /// Delivered something new and valid first.
    Delivered,
    /// Answered a request.
    Answered,
    /// Solved an AI challenge correctly / incorrectly.
    AiSolution(bool),
    /// A verdict that agreed / disagreed with the quorum.
    AiVerdict(bool),
    /// An operator's ban.
    Manual,
}

impl Reason {
    /// How severe this reason is.
    pub fn severity(self) -> Severity {
        match self {
            Reason::InvalidBlock
            | Reason::WrongGenesis
            | Reason::MalformedFrame
            | Reason::Manual
            | Reason::Relay(
                Offence::InvalidHeader | Offence::InvalidTransaction | Offence::InvalidAiMessage,
            ) => Severity::Fatal,
            Reason::InvalidHeaders | Reason::AiSolution(false) => Severity::High,
            Reason::Relay(Offence::InvalidBlockBody | Offence::MalformedReply)
            | Reason::AiVerdict(false) => Severity::Medium,
            Reason::Relay(
                Offence::Unrequested | Offence::RequestTimeout | Offence::RequestFlood,
            )
            | Reason::Stalled
            | Reason::RateLimited => Severity::Low,
            Reason::Delivered | Reason::AiSolution(true) => Severity::UsefulDelivery,
            Reason::Answered | Reason::AiVerdict(true) => Severity::Answered,
        }
    }

    /// Whether this reports slowness (a late, missing or surplus message), not misbehaviour:
    /// it moves only the slowness part, and is ignored while we are overloaded (when we are
    /// slow, our timeouts fire before we read the answers, and those answers then look late or
    /// unrequested).
    pub fn is_slowness(self) -> bool {
        self.severity() == Severity::Low
    }
}

/// One entry of a peer's reason log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogEntry {
    /// When.
    pub at: TimestampMs,
    /// Why.
    pub reason: Reason,
    /// The score after it.
    pub score_after: f64,
}

/// What the caller must do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Disconnect the peer (it may come back).
    Disconnect,
    /// Ban the peer until the given time.
    Ban {
        /// Ban expiry.
        until: TimestampMs,
    },
    /// Ban the peer, and its IP too (too many banned peers came from it).
    BanWithIp {
        /// Ban expiry.
        until: TimestampMs,
        /// The IP.
        ip: IpAddr,
    },
}

/// Reputation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReputationConfig {
    /// Half-life of the conduct part of scores, in ms.
    pub half_life_ms: u64,
    /// Half-life of the slowness part, in ms.
    pub slowness_half_life_ms: u64,
    /// Lowest the slowness part can go (≤ 0). Below `disconnect_below`, so that a peer that only
    /// times out can be disconnected; bans never look at it.
    pub slowness_floor: f64,
    /// Below this score a peer is disconnected.
    pub disconnect_below: f64,
    /// Below this score a peer is banned.
    pub ban_below: f64,
    /// First ban duration, in ms; each repeat ban doubles it.
    pub base_ban_ms: u64,
    /// Longest ban, in ms.
    pub max_ban_ms: u64,
    /// Banned peers from one IP after which the IP itself is banned.
    pub max_banned_per_ip: usize,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            // Ten minutes: a burst of bad data is forgiven within the hour.
            half_life_ms: 10 * 60 * 1000,
            // One minute: a burst of timeouts under load is forgotten as soon as it ends.
            slowness_half_life_ms: 60 * 1000,
            // 25 slowness reports (-2 each) close together with nothing useful delivered cross
            // -50; the relay blames a peer at most once per request timeout, so that is about
            // 30 s of continuous timeouts. It may reconnect once it has decayed back above -50,
            // about 15 s later.
            slowness_floor: -60.0,
            disconnect_below: -50.0,
            ban_below: -90.0,
            base_ban_ms: 60 * 60 * 1000,
            max_ban_ms: 7 * 24 * 60 * 60 * 1000,
            max_banned_per_ip: 3,
        }
    }
}

/// A ban, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    /// Expiry.
    pub until: TimestampMs,
    /// How many times this peer was banned (doubles the next duration).
    pub count: u32,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The conduct part, as of `updated`.
    score: f64,
    updated: TimestampMs,
    /// The slowness part (≤ 0), as of `slow_updated`.
    slowness: f64,
    slow_updated: TimestampMs,
    log: VecDeque<LogEntry>,
    ip: Option<IpAddr>,
}

impl Entry {
    /// The conduct part, decayed to `now`.
    fn conduct(&self, now: TimestampMs, config: &ReputationConfig) -> f64 {
        decay(self.score, self.updated, now, config.half_life_ms)
    }

    /// The score: conduct plus slowness, each decayed to `now`.
    fn total(&self, now: TimestampMs, config: &ReputationConfig) -> f64 {
        let slowness = decay(
            self.slowness,
            self.slow_updated,
            now,
            config.slowness_half_life_ms,
        );
        (self.conduct(now, config) + slowness).clamp(MIN_SCORE, MAX_SCORE)
    }
}

/// The reputation table.
#[derive(Debug)]
pub struct Reputation<P: PeerKey> {
    config: ReputationConfig,
    peers: HashMap<P, Entry>,
    bans: HashMap<P, Ban>,
    ip_bans: HashMap<IpAddr, TimestampMs>,
    exempt: HashSet<P>,
    overloaded: bool,
}

impl<P: PeerKey + Hash> Reputation<P> {
    /// An empty table.
    pub fn new(config: ReputationConfig) -> Self {
        Reputation {
            config,
            peers: HashMap::new(),
            bans: HashMap::new(),
            ip_bans: HashMap::new(),
            exempt: HashSet::new(),
            overloaded: false,
        }
    }

    /// Trusted and persistent peers: scored, never disconnected or banned automatically.
    pub fn set_exempt(&mut self, peer: P, exempt: bool) {
        if exempt {
            self.exempt.insert(peer);
        } else {
            self.exempt.remove(&peer);
        }
    }

    /// Turns the local-fault guard on while we are the problem.
    pub fn set_local_overload(&mut self, overloaded: bool) {
        self.overloaded = overloaded;
    }

    /// Records the IP a peer connects from (for IP bans).
    pub fn note_ip(&mut self, peer: P, ip: IpAddr, now: TimestampMs) {
        self.entry(peer, now).ip = Some(ip);
    }

    fn entry(&mut self, peer: P, now: TimestampMs) -> &mut Entry {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_TRACKED_PEERS {
            // Forget the stalest entry; bans are kept separately, so nothing punitive is lost.
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(k, e)| (e.updated.max(e.slow_updated), **k))
                .map(|(k, _)| *k)
            {
                self.peers.remove(&oldest);
            }
        }
        self.peers.entry(peer).or_insert_with(|| Entry {
            score: 0.0,
            updated: now,
            slowness: 0.0,
            slow_updated: now,
            log: VecDeque::new(),
            ip: None,
        })
    }

    /// The current (decayed) score, conduct plus slowness; 0 for an unknown peer.
    pub fn score(&self, peer: &P, now: TimestampMs) -> f64 {
        self.peers
            .get(peer)
            .map_or(0.0, |e| e.total(now, &self.config))
    }

    /// The current (decayed) conduct part alone: what bans look at.
    pub fn conduct(&self, peer: &P, now: TimestampMs) -> f64 {
        self.peers
            .get(peer)
            .map_or(0.0, |e| e.conduct(now, &self.config))
    }

    /// Every tracked peer's current (decayed) score.
    pub fn scores(&self, now: TimestampMs) -> Vec<(P, f64)> {
        let mut out: Vec<(P, f64)> = self
            .peers
            .iter()
            .map(|(p, e)| (*p, e.total(now, &self.config)))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }

    /// The reason log, oldest first.
    pub fn log(&self, peer: &P) -> Vec<LogEntry> {
        self.peers
            .get(peer)
            .map(|e| e.log.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records an event and says what to do about the peer.
    pub fn report(&mut self, peer: P, reason: Reason, now: TimestampMs) -> Action {
        let slowness = reason.is_slowness();
        if self.overloaded && slowness {
            return Action::None;
        }
        let severity = reason.severity();
        let config = self.config;
        let e = self.entry(peer, now);
        // The conduct part after this report; `None` for slowness, which never bans.
        let conduct = if slowness {
            let decayed = decay(
                e.slowness,
                e.slow_updated,
                now,
                config.slowness_half_life_ms,
            );
            e.slowness = (decayed + severity.delta()).clamp(config.slowness_floor.min(0.0), 0.0);
            e.slow_updated = now;
            None
        } else {
            e.score = (e.conduct(now, &config) + severity.delta()).clamp(MIN_SCORE, MAX_SCORE);
            e.updated = now;
            Some(e.score)
        };
        let score = e.total(now, &config);
        let ip = e.ip;
        if e.log.len() >= REASON_LOG_LEN {
            e.log.pop_front();
        }
        e.log.push_back(LogEntry {
            at: now,
            reason,
            score_after: score,
        });
        if self.exempt.contains(&peer) && reason != Reason::Manual {
            return Action::None;
        }
        if self.is_banned(&peer, now) {
            // Reports racing the disconnect of a banned peer: it is refused already.
            return Action::None;
        }
        if severity == Severity::Fatal || conduct.is_some_and(|c| c <= self.config.ban_below) {
            return self.ban(peer, ip, now);
        }
        if score <= self.config.disconnect_below {
            return Action::Disconnect;
        }
        Action::None
    }

    fn ban(&mut self, peer: P, ip: Option<IpAddr>, now: TimestampMs) -> Action {
        let count = self
            .bans
            .get(&peer)
            .map_or(0, |b| b.count)
            .saturating_add(1);
        let duration = self
            .config
            .base_ban_ms
            .saturating_mul(1u64 << (count - 1).min(20))
            .min(self.config.max_ban_ms);
        let until = TimestampMs(now.0.saturating_add(duration));
        self.insert_ban(peer, Ban { until, count });
        if let Some(ip) = ip {
            let banned_here = self
                .bans
                .iter()
                .filter(|(p, b)| b.until > now && self.peers.get(p).and_then(|e| e.ip) == Some(ip))
                .count();
            if banned_here > self.config.max_banned_per_ip {
                if !self.ip_bans.contains_key(&ip)
                    && self.ip_bans.len() >= MAX_IP_BANS
                    && let Some(first) = self
                        .ip_bans
                        .iter()
                        .min_by_key(|(i, u)| (**u, **i))
                        .map(|(i, _)| *i)
                {
                    self.ip_bans.remove(&first);
                }
                self.ip_bans.insert(ip, until);
                return Action::BanWithIp { until, ip };
            }
        }
        Action::Ban { until }
    }

    /// Records a ban within `MAX_BANS`, forgetting the one that ends first when full.
    fn insert_ban(&mut self, peer: P, ban: Ban) {
        if !self.bans.contains_key(&peer)
            && self.bans.len() >= MAX_BANS
            && let Some(first) = self
                .bans
                .iter()
                .min_by_key(|(p, b)| (b.until, **p))
                .map(|(p, _)| *p)
        {
            self.bans.remove(&first);
        }
        self.bans.insert(peer, ban);
    }

    /// An operator's ban for `duration_ms`.
    pub fn ban_manually(&mut self, peer: P, duration_ms: u64, now: TimestampMs) -> TimestampMs {
        let count = self
            .bans
            .get(&peer)
            .map_or(0, |b| b.count)
            .saturating_add(1);
        let until = TimestampMs(now.0.saturating_add(duration_ms));
        self.insert_ban(peer, Ban { until, count });
        until
    }

    /// Lifts a ban (the repeat count is kept); `false` if there was none to lift.
    pub fn unban(&mut self, peer: &P) -> bool {
        match self.bans.get_mut(peer) {
            Some(b) if b.until > TimestampMs(0) => {
                b.until = TimestampMs(0);
                true
            }
            _ => false,
        }
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &P, now: TimestampMs) -> bool {
        self.bans.get(peer).is_some_and(|b| b.until > now)
    }

    /// Whether `ip` is banned now.
    pub fn is_ip_banned(&self, ip: &IpAddr, now: TimestampMs) -> bool {
        self.ip_bans.get(ip).is_some_and(|until| *until > now)
    }

    /// Active bans, to persist.
    pub fn bans(&self, now: TimestampMs) -> Vec<(P, Ban)> {
        let mut out: Vec<(P, Ban)> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(p, b)| (*p, *b))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }

    /// IP bans in force, with their expiry.
    pub fn ip_bans(&self, now: TimestampMs) -> Vec<(IpAddr, TimestampMs)> {
        let mut out: Vec<(IpAddr, TimestampMs)> = self
            .ip_bans
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, until)| (*ip, *until))
            .collect();
        out.sort();
        out
    }

    /// Restores persisted bans (at start-up), within `MAX_BANS`.
    pub fn restore_bans(&mut self, bans: impl IntoIterator<Item = (P, Ban)>) {
        for (peer, ban) in bans {
            self.insert_ban(peer, ban);
        }
    }

    /// Score histogram buckets for metrics: counts of peers with score in
    /// (-inf,-50], (-50,-10], (-10,10), [10,50), [50,inf).
    pub fn distribution(&self, now: TimestampMs) -> [usize; 5] {
        let mut out = [0; 5];
        for e in self.peers.values() {
            let s = e.total(now, &self.config);
            let i = match s {
                s if s <= -50.0 => 0,
                s if s <= -10.0 => 1,
                s if s < 10.0 => 2,
                s if s < 50.0 => 3,
                _ => 4,
            };
            out[i] += 1;
        }
        out
    }
}

/// `score` at `from`, decayed to `now` with `half_life_ms`.
fn decay(score: f64, from: TimestampMs, now: TimestampMs, half_life_ms: u64) -> f64 {
    let dt = now.0.saturating_sub(from.0) as f64;
    score * 0.5f64.powf(dt / half_life_ms.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * 1000;

    /// The scripted table: each step is (time in minutes, reason) and the expected score after
    /// it (to 0.01) and action.
    #[test]
    fn scripted_sequence_gives_exact_scores_decay_disconnects_and_bans() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        let t = |m: u64| TimestampMs(1_000_000 + m * MIN);
        let steps: [(u64, Reason, f64, Action); 6] = [
            (
                0,
                Reason::Relay(Offence::RequestTimeout),
                -2.0,
                Action::None,
            ),
            // Ten minutes later the timeout's -2 has halved ten times (to -0.002), then bad
            // headers: -25.
            (10, Reason::InvalidHeaders, -25.0, Action::None),
            (10, Reason::InvalidHeaders, -50.0, Action::Disconnect),
            // One half-life later: -25, plus a delivery: -24.
            (20, Reason::Delivered, -24.0, Action::None),
            (20, Reason::InvalidHeaders, -49.0, Action::None),
            (20, Reason::InvalidHeaders, -74.0, Action::Disconnect),
        ];
        for (i, (m, reason, score, action)) in steps.into_iter().enumerate() {
            assert_eq!(rep.report(1, reason, t(m)), action, "step {i}");
            assert!(
                (rep.score(&1, t(m)) - score).abs() < 0.01,
                "step {i}: {}",
                rep.score(&1, t(m))
            );
        }
        // More bad headers cross the ban threshold (-99): banned for the base duration, once;
        // a report racing the disconnect asks for nothing more and does not extend it.
        assert_eq!(
            rep.report(1, Reason::InvalidHeaders, t(20)),
            Action::Ban {
                until: TimestampMs(t(20).0 + 60 * MIN)
            }
        );
        assert_eq!(rep.report(1, Reason::InvalidHeaders, t(20)), Action::None);
        assert!(rep.is_banned(&1, t(21)) && !rep.is_banned(&1, t(81)));
        // A fatal offence bans at once; the second ban lasts twice as long.
        assert_eq!(
            rep.report(1, Reason::InvalidBlock, t(100)),
            Action::Ban {
                until: TimestampMs(t(100).0 + 120 * MIN)
            }
        );
        assert_eq!(rep.log(&1).len(), 9);
        // Scores are bounded.
        assert!(rep.score(&1, t(100)) >= MIN_SCORE);
    }

    /// Every slowness reason, at any rate, for an hour: disconnects at most, never a ban.
    #[test]
    fn a_peer_that_is_only_slow_is_disconnected_but_never_banned() {
        let slow = [
            Reason::Relay(Offence::RequestTimeout),
            Reason::Relay(Offence::Unrequested),
            Reason::Relay(Offence::RequestFlood),
            Reason::Stalled,
            Reason::RateLimited,
        ];
        let config = ReputationConfig::default();
        let mut rep: Reputation<u8> = Reputation::new(config);
        let mut disconnects = 0;
        // 200 reports a second (a burst of one a millisecond every 5 ms) for an hour.
        for i in 0..720_000u64 {
            let now = TimestampMs(i * 5);
            match rep.report(1, slow[(i % 5) as usize], now) {
                Action::None => {}
                Action::Disconnect => disconnects += 1,
                other => panic!("slowness must never ban: {other:?} at report {i}"),
            }
            assert!(rep.score(&1, now) >= config.slowness_floor - 1e-9);
        }
        assert!(disconnects > 0, "a peer that stays useless is disconnected");
        assert!(!rep.is_banned(&1, TimestampMs(3_600_000)));
        assert!(rep.bans(TimestampMs(3_600_000)).is_empty());
        // Its slowness fades within minutes once it stops: no disconnect for a lone timeout.
        let later = TimestampMs(3_600_000 + 5 * MIN);
        assert_eq!(
            rep.report(1, Reason::Relay(Offence::RequestTimeout), later),
            Action::None
        );
        assert!(rep.score(&1, later) > config.disconnect_below / 10.0);
    }

    /// Slowness on top of real misbehaviour still cannot tip a peer into a ban: only the
    /// conduct part counts, and proof of misbehaviour (an invalid signature) bans at once.
    #[test]
    fn slowness_never_adds_up_to_a_ban_and_an_invalid_signature_bans_at_once() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        let now = TimestampMs(1_000);
        for _ in 0..3 {
            rep.report(1, Reason::InvalidHeaders, now);
        }
        assert!((rep.conduct(&1, now) - -75.0).abs() < 0.01);
        for _ in 0..1_000 {
            let action = rep.report(1, Reason::Relay(Offence::RequestTimeout), now);
            assert!(
                matches!(action, Action::None | Action::Disconnect),
                "{action:?}"
            );
        }
        assert!(!rep.is_banned(&1, now));
        assert_eq!(rep.score(&1, now), MIN_SCORE, "the total is still bounded");
        // A peer with a perfect record sends one transaction with a bad signature.
        for _ in 0..100 {
            rep.report(2, Reason::Delivered, now);
        }
        assert!(matches!(
            rep.report(2, Reason::Relay(Offence::InvalidTransaction), now),
            Action::Ban { .. }
        ));
        assert!(rep.is_banned(&2, now));
    }

    #[test]
    fn local_faults_and_exempt_peers_are_never_punished() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        let now = TimestampMs(0);
        rep.set_local_overload(true);
        for reason in [
            Reason::Relay(Offence::RequestTimeout),
            Reason::Relay(Offence::Unrequested),
            Reason::Stalled,
        ] {
            for _ in 0..100 {
                assert_eq!(rep.report(2, reason, now), Action::None);
            }
        }
        assert_eq!(rep.score(&2, now), 0.0);
        rep.set_exempt(3, true);
        assert_eq!(rep.report(3, Reason::InvalidBlock, now), Action::None);
        assert!(!rep.is_banned(&3, now));
    }

    #[test]
    fn an_ip_with_too_many_banned_peers_is_banned() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        let now = TimestampMs(0);
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let mut last = Action::None;
        for p in 0..5 {
            rep.note_ip(p, ip, now);
            last = rep.report(p, Reason::WrongGenesis, now);
        }
        assert!(matches!(last, Action::BanWithIp { .. }));
        assert!(rep.is_ip_banned(&ip, now));
    }

    #[test]
    fn the_ban_table_is_bounded_and_forgets_the_ban_that_ends_first() {
        let mut rep: Reputation<u32> = Reputation::new(ReputationConfig::default());
        let now = TimestampMs(1_000);
        // One fresh identity after another, each banned (peer 0's ban ends first).
        for p in 0..MAX_BANS as u32 {
            rep.ban_manually(p, 60_000 + u64::from(p), now);
        }
        assert_eq!(rep.bans(now).len(), MAX_BANS);
        let newest = MAX_BANS as u32;
        rep.report(newest, Reason::MalformedFrame, now);
        assert_eq!(rep.bans(now).len(), MAX_BANS);
        assert!(rep.is_banned(&newest, now) && rep.is_banned(&1, now));
        assert!(!rep.is_banned(&0, now), "the earliest-ending ban made room");
        // Restoring more than fit from storage is bounded the same way.
        let mut restarted: Reputation<u32> = Reputation::new(ReputationConfig::default());
        restarted.restore_bans((0..MAX_BANS as u32 + 10).map(|p| {
            (
                p,
                Ban {
                    until: TimestampMs(2_000 + u64::from(p)),
                    count: 1,
                },
            )
        }));
        assert_eq!(restarted.bans(now).len(), MAX_BANS);
        assert!(!restarted.is_banned(&9, now) && restarted.is_banned(&10, now));
    }

    #[test]
    fn a_corrupt_repeat_count_does_not_overflow() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        rep.restore_bans([(
            1,
            Ban {
                until: TimestampMs(0),
                count: u32::MAX,
            },
        )]);
        let max = ReputationConfig::default().max_ban_ms;
        assert_eq!(
            rep.report(1, Reason::InvalidBlock, TimestampMs(5)),
            Action::Ban {
                until: TimestampMs(5 + max)
            }
        );
        assert_eq!(rep.ban_manually(1, 10, TimestampMs(5)), TimestampMs(15));
    }

    #[test]
    fn bans_round_trip_through_persistence() {
        let mut rep: Reputation<u8> = Reputation::new(ReputationConfig::default());
        rep.report(7, Reason::MalformedFrame, TimestampMs(0));
        let saved = rep.bans(TimestampMs(1));
        let mut restarted: Reputation<u8> = Reputation::new(ReputationConfig::default());
        restarted.restore_bans(saved);
        assert!(restarted.is_banned(&7, TimestampMs(1)));
        assert!(restarted.unban(&7));
        assert!(!restarted.is_banned(&7, TimestampMs(1)));
    }
}
